"""The drift detector fires on a shifted stream and stays quiet on a stable one."""

from __future__ import annotations

import numpy as np

from fraud.drift import DriftMonitor


def _stream(monitor: DriftMonitor, n: int, fraud_rate: float, caught: float,
            seed: int) -> list[int]:
    """Feed labels: frauds score high with probability ``caught``; returns detections."""
    rng = np.random.default_rng(seed)
    fired = []
    for i in range(n):
        fraud = rng.random() < fraud_rate
        score = (0.9 if rng.random() < caught else 0.05) if fraud else rng.uniform(0, 0.3)
        if monitor.update(fraud, score, review_threshold=0.5):
            fired.append(i)
    return fired


def test_no_drift_on_a_stable_stream() -> None:
    monitor = DriftMonitor()
    assert _stream(monitor, 20_000, 0.02, 0.95, seed=0) == []
    assert monitor.snapshot()["drift"]["active"] is False


def test_drift_fires_when_a_new_pattern_slips_through() -> None:
    alerts: list[tuple[str, dict]] = []  # type: ignore[type-arg]
    monitor = DriftMonitor()
    monitor.on_drift = lambda stream, detail: alerts.append((stream, detail))
    assert _stream(monitor, 10_000, 0.02, 0.95, seed=1) == []
    fired = _stream(monitor, 3_000, 0.04, 0.4, seed=2)  # new fraud the model misses
    assert fired, "a recall drop from 95% to ~70% must be detected within 3000 labels"
    assert alerts and alerts[0][0] in ("error", "miss")
    assert alerts[0][1]["label_index"] == 10_000 + fired[0] + 1
    state = monitor.snapshot()
    assert state["drift"]["detections"] == len(alerts) >= 1
    assert state["recall"] < 0.8
    # The alert stays up for a window of labels after the last detection (the recovery
    # is a change too), then clears once the stream is stable again.
    assert state["drift"]["active"] is (3_000 - fired[-1] <= monitor.window)
    again = _stream(monitor, 20_000, 0.02, 0.95, seed=4)
    assert not again or again[-1] < 20_000 - monitor.window
    assert monitor.snapshot()["drift"]["active"] is False


def test_rolling_precision_and_recall_follow_the_labels() -> None:
    monitor = DriftMonitor(window=100)
    for i in range(100):
        monitor.update(i < 10, 0.9 if i < 5 or i >= 95 else 0.1, review_threshold=0.5)
    state = monitor.snapshot()
    assert state["recall"] == 0.5  # 5 of 10 frauds flagged
    assert state["precision"] == 0.5  # 5 of 10 flagged were fraud


def test_the_monitor_survives_a_snapshot_without_its_callback() -> None:
    import pickle

    monitor = DriftMonitor()
    monitor.on_drift = lambda *a: None
    _stream(monitor, 500, 0.02, 0.95, seed=3)
    restored = pickle.loads(pickle.dumps(monitor))
    assert restored.on_drift is None and restored.snapshot() == monitor.snapshot()
