"""`mlsuite demo` end to end: data present -> Redis, Feast, models, both services up, clean stop."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlplatform.redisdb import connect
from mlplatform.worker import heartbeats

pytestmark = pytest.mark.slow


def test_demo_serves_both_services_and_stops_cleanly(sim_data_dir: Path, tmp_path: Path,
                                                     wait_for: Callable[..., Any]) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(sim_data_dir, data_dir)
    env = {**os.environ, "MLSUITE_DATA_DIR": str(data_dir), "MLSUITE_REDIS_URL": "",
           "MLSUITE_RECOMMENDER_PORT": "0", "MLSUITE_FRAUD_PORT": "0", "MLSUITE_WORKERS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mlplatform", "demo"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    urls: dict[str, str] = {}
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 300
        assert proc.stdout is not None
        while len(urls) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.match(r"^(recommender|fraud): (http://127\.0\.0\.1:\d+)$", line.strip())
            if match:
                urls[match.group(1)] = match.group(2)
        assert set(urls) == {"recommender", "fraud"}, "".join(lines[-30:])
        for url in urls.values():
            with urllib.request.urlopen(f"{url}/readyz", timeout=10) as resp:
                assert resp.status == 200
        # One background worker per service runs beside the servers: the demo is ready
        # when the servers answer, and the workers report a few seconds later.
        client = connect((data_dir / "redis" / "redis.url").read_text().strip())
        wait_for("a background worker per service",
                 lambda: {b["service"] for b in heartbeats(client)} == {"recommender", "fraud"},
                 timeout=120)
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert not (data_dir / "redis" / "redis.url").exists()  # embedded Redis stopped
    assert "Traceback" not in "".join(lines) + out
