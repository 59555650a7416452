"""``mlsuite soak``: Redis memory under steady load, with the worker's retention running.

Starts one service and its worker (``mlplatform.stack.Stack``, private Redis) with the
given stream retention, drives one endpoint at a fixed rate (the bench's load
generator and payloads) in slices, and after each slice samples Redis ``used_memory``,
the entries held in streams and the lake's size on disk. It prints one line per sample
and a summary: memory per 1,000 requests over the first and the second half of the
run. With retention working, the second half's growth falls towards zero: Redis levels
off at about retention x rate entries while the lake takes the rest.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["soak", "run_soak"]


def _streams(client: Any) -> dict[str, int]:
    out = {}
    for key in client.scan_iter(_type="STREAM", count=1000):
        out[key.decode()] = int(client.xlen(key))
    return out


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def run_soak(settings: Any, *, service: str, endpoint: str, rate: float, seconds: float,
             sample_seconds: float, retention: float,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """The soak itself; returns the JSON report."""
    from mlplatform.bench.loadgen import run_load
    from mlplatform.bench.payloads import endpoints_for
    from mlplatform.redisdb import connect
    from mlplatform.stack import Stack

    settings = settings.with_(stream_retention_seconds=retention,
                              archive_interval_seconds=max(0.5, min(5.0, retention / 4)))
    samples: list[dict[str, Any]] = []
    with Stack(settings, [service], server=settings.server, workers=settings.workers,
               name="soak", say=say) as stack:
        [target_ep] = [e for e in endpoints_for([service], stack.settings.data_dir)
                       if e.name == endpoint]
        target = target_ep.target("127.0.0.1", stack.ports[service], stack.auth_headers)
        client = connect(stack.settings.redis_url or "")
        lake = stack.settings.lake_dir or stack.settings.data_dir / "lake"
        # Warm up (caches, first snapshot), then take the starting point.
        run_load(target, connections=8, duration=2.0, rate=rate)
        time.sleep(1.0)
        base_mem = int(client.info("memory")["used_memory"])
        base_lake = _folder_bytes(lake)
        say(f"soak {endpoint} at {rate:g} req/s for {seconds:g}s, retention {retention:g}s; "
            f"Redis at start {base_mem / 1e6:.1f} MB")
        say(f"{'t (s)':>7} {'requests':>9} {'redis MB':>9} {'+bytes/1k req':>14} "
            f"{'stream entries':>15} {'lake MB':>8}")
        done = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            result = run_load(target, connections=8, duration=sample_seconds, rate=rate)
            done += result.ok * target_ep.items_per_request
            if result.error_count:
                raise RuntimeError(f"{result.error_count} requests failed: {dict(result.errors)}")
            mem = int(client.info("memory")["used_memory"])
            streams = _streams(client)
            t = round(time.monotonic() - started, 1)
            entries = sum(streams.values())
            lake_bytes = _folder_bytes(lake) - base_lake
            samples.append({"t_s": t, "requests": done, "used_memory": mem,
                            "streams": streams, "stream_entries": entries,
                            "lake_bytes": lake_bytes})
            per_k = (mem - base_mem) / done * 1000 if done else 0.0
            say(f"{t:>7.0f} {done:>9} {mem / 1e6:>9.2f} {per_k:>14,.0f} "
                f"{entries:>15} {lake_bytes / 1e6:>8.2f}")
        client.close()
    half = len(samples) // 2
    report: dict[str, Any] = {"endpoint": endpoint, "rate": rate, "seconds": seconds,
                              "retention_s": retention, "start_used_memory": base_mem,
                              "samples": samples}
    if half >= 1:
        a, b = samples[half - 1], samples[-1]
        first = (a["used_memory"] - base_mem) / a["requests"] * 1000
        second = ((b["used_memory"] - a["used_memory"]) / max(1, b["requests"] - a["requests"])
                  * 1000)
        report["bytes_per_1000_first_half"] = round(first)
        report["bytes_per_1000_second_half"] = round(second)
        say(f"Redis growth per 1,000 requests: first half {first:,.0f} bytes, "
            f"second half {second:,.0f} bytes")
    return report


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--service", type=click.Choice(["fraud", "recommender"]), default="fraud",
              show_default=True)
@click.option("--endpoint", default=None,
              help="Bench endpoint name (default: fraud.score / recommender.events).")
@click.option("--rate", type=click.FloatRange(1, 100_000), default=300.0, show_default=True,
              help="Requests per second, held for the whole run.")
@click.option("--seconds", type=click.FloatRange(5, 86_400), default=240.0, show_default=True,
              help="Length of the run.")
@click.option("--sample-seconds", type=click.FloatRange(1, 600), default=15.0,
              show_default=True, help="Seconds between memory samples.")
@click.option("--retention", type=click.FloatRange(1, 10 * 365 * 86400), default=60.0,
              show_default=True,
              help="Stream retention for this run, seconds (a huge value: no trimming).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write the report as JSON to this file.")
def soak(service: str, endpoint: str | None, rate: float, seconds: float,
         sample_seconds: float, retention: float, json_path: Path | None) -> None:
    """Redis memory under steady load with stream retention: does it level off?"""
    from mlplatform.config import get_settings
    from mlplatform.logs import configure_logging
    from mlplatform.stack import sigterm_interrupts

    settings = get_settings()
    configure_logging(settings.log_level)
    name = endpoint or {"fraud": "fraud.score", "recommender": "recommender.events"}[service]
    try:
        with sigterm_interrupts():
            report = run_soak(settings, service=service, endpoint=name, rate=rate,
                              seconds=seconds, sample_seconds=sample_seconds,
                              retention=retention, say=click.echo)
    except KeyboardInterrupt:
        click.echo("\nsoak interrupted: servers and Redis stopped", err=True)
        sys.exit(130)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        click.echo(f"JSON report: {json_path}")
