"""``mlsuite demo``: the whole suite on a laptop, from nothing, in one command.

Steps: simulate data (when there is none) -> start the embedded Redis (unless
MLSUITE_REDIS_URL is set) -> feast apply + materialize -> make sure each service has a
production model -> start each service under the production server -> print one
``name: URL`` line per service -> on Ctrl-C / SIGTERM stop the services, then Redis.
"""

from __future__ import annotations

import logging
import subprocess
import time
from importlib.metadata import entry_points

from mlplatform import serving
from mlplatform.config import Settings
from mlplatform.redisdb import EmbeddedRedis

__all__ = ["run_demo", "prepare_models"]

log = logging.getLogger(__name__)


def prepare_models(settings: Settings, services: list[str]) -> None:
    """Run each app's ``ensure_model`` hook (entry points "mlsuite.prepare")."""
    hooks = {ep.name: ep for ep in entry_points(group="mlsuite.prepare")}
    for service in services:
        if service in hooks:
            log.info("%s: making sure a production model exists", service)
            hooks[service].load()(settings)


def run_demo(settings: Settings, services: list[str]) -> int:
    for service in services:
        serving.service_target(service)  # unknown names fail before any work
    if not serving.data_ready(settings.data_dir):
        from mlplatform.simulate import DEFAULT_SIZES, simulate_all

        log.info("no data in %s yet: simulating (seed %d)", settings.data_dir, settings.seed)
        simulate_all(settings.data_dir, seed=settings.seed, **DEFAULT_SIZES)

    embedded = None if settings.redis_url else EmbeddedRedis(settings.data_dir)
    redis_url = settings.redis_url or embedded.start()  # type: ignore[union-attr]
    settings = settings.with_(redis_url=redis_url)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with serving.shutdown_signals() as stop:
            from mlplatform.features import FeatureStoreAdapter

            store = FeatureStoreAdapter.from_settings(settings)
            log.info("feast: apply and materialize")
            store.apply()
            store.materialize()
            prepare_models(settings, services)
            ports = {"recommender": settings.recommender_port, "fraud": settings.fraud_port}
            for service in services:
                port = ports.get(service) or serving.free_port_for(settings.host)
                procs[service] = serving.spawn(service, settings, port=port,
                                               workers=settings.workers, server=settings.server,
                                               redis_url=redis_url)
                ports[service] = port
            for service, proc in procs.items():
                url = f"http://{settings.host}:{ports[service]}"
                serving.wait_ready(url, timeout=180, proc=proc)
                print(f"{service}: {url}", flush=True)
            print("demo running; Ctrl-C stops it", flush=True)
            while not stop.requested:
                dead = [s for s, p in procs.items() if p.poll() is not None]
                if dead:
                    log.error("%s exited; stopping the demo", ", ".join(dead))
                    return 1
                time.sleep(0.2)
            return 0
    finally:
        for proc in procs.values():
            serving.stop_process(proc)
        if embedded is not None:
            embedded.stop()
        log.info("demo stopped")
