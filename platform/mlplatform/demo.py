"""``mlsuite demo``: the whole suite on a laptop, from nothing, in one command.

Steps (``mlplatform.stack.Stack``): simulate data when there is none -> start the data
folder's embedded Redis (unless MLSUITE_REDIS_URL is set) -> feast apply + materialize ->
make sure each service has a production model -> start each service under the
production server -> print one ``name: URL`` line per service -> on Ctrl-C / SIGTERM
stop the services, then Redis.
"""

from __future__ import annotations

import logging
import time
from importlib.metadata import entry_points

from mlplatform.config import Settings
from mlplatform.serving import interrupted, sigterm_interrupts, stop_requests

__all__ = ["run_demo", "prepare_models"]

log = logging.getLogger(__name__)

# Where a person starts with a service, when that is not its root.
_PATHS = {"graphql": "/graphql"}


def prepare_sources(settings: Settings, services: list[str] | None = None) -> None:
    """Run each app's source hook (entry points "mlsuite.sources"): the files Feast reads
    that an app derives from its input (personal ids tokenised). Before Feast's apply and
    materialize, so the online store never holds an id as it was sent."""
    for ep in entry_points(group="mlsuite.sources"):
        if services is None or ep.name in services:
            if ep.load()(settings):
                log.info("%s: feature sources prepared", ep.name)


def prepare_models(settings: Settings, services: list[str]) -> None:
    """Run each app's ``ensure_model`` hook (entry points "mlsuite.prepare")."""
    hooks = {ep.name: ep for ep in entry_points(group="mlsuite.prepare")}
    for service in services:
        if service in hooks:
            log.info("%s: making sure a production model exists", service)
            hooks[service].load()(settings)


def run_demo(settings: Settings, services: list[str]) -> int:
    from mlplatform.stack import Stack

    ports = {"recommender": settings.recommender_port, "fraud": settings.fraud_port,
             "console": settings.console_port, "graphql": settings.graphql_port}
    # GraphQL only relays to the services: one process is plenty for a laptop, and it
    # starts faster.
    stack = Stack(settings, services, server=settings.server, workers=settings.workers,
                  name="demo", ports=ports, private_redis=False, say=log.info,
                  workers_for={"graphql": 1}, wait_workers=False)
    try:
        with sigterm_interrupts():
            urls = stack.start()
            with stop_requests() as stop:
                for service in services:
                    print(f"{service}: {urls[service]}{_PATHS.get(service, '')}", flush=True)
                if stack.api_key:  # every scope; revoked when the demo stops
                    print(f"api key: {stack.api_key}", flush=True)
                print("demo running; Ctrl-C stops it", flush=True)
                while not stop and not stack.dead():
                    time.sleep(0.2)
                if stop:
                    return 0
            log.error("%s exited; stopping the demo", ", ".join(stack.dead()))
            return 1
    except BaseException as exc:
        if not interrupted(exc):
            raise
        return 0
    finally:
        stack.stop()
        log.info("demo stopped")
