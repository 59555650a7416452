"""`mlsuite simulate traffic` against a real recommender over HTTP, with its worker running.

The app is served by a real HTTP server on a free port (werkzeug, threaded) on the small
simulated shop; the shoppers' truth must match what the experiment report measures.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from mlplatform.assignment import Experiment
from mlplatform.config import Settings
from mlplatform.errors import MLSuiteError
from mlplatform.simulate.traffic import TrafficConfig, format_result, run_traffic
from mlplatform.worker import Worker

from .conftest import ONLY

SPLIT = Experiment("recommender_model", "traffic-test", {"als": 0.5, "popularity": 0.5})


@pytest.fixture
def served_url(make_app: Callable[..., Flask]) -> Iterator[str]:
    server: BaseWSGIServer = make_server("127.0.0.1", 0, make_app(**{ONLY: SPLIT}),
                                         threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


def test_simulated_shoppers_truth_matches_the_measured_report(
        served_url: str, served_settings: Settings, worker: Worker) -> None:
    config = TrafficConfig(recommender_url=served_url, data_dir=served_settings.data_dir,
                           minutes=0.1, rate=25.0, fraud_url=None, threads=4, seed=3,
                           progress=False)
    result = run_traffic(config, say=lambda _m: None)
    body = result.to_json()
    assert body["errors"] == {}, body["errors"]
    assert body["sessions"] >= 60, body  # ~150 expected in 6 s at 25/s
    assert body["experiment"] == "recommender_model"
    measured = body["measured"]
    assert measured is not None and measured["control"] == "popularity"
    for variant, truth in body["truth"].items():
        m = measured["variants"][variant]
        # Every session is one exposure; every shopper who carted a shown item converted.
        assert m["exposures"] == truth["sessions"], (variant, m, truth)
        assert m["users"] == truth["users"]
        assert m["conversions"] == truth["converted"], (variant, m, truth)
        assert m["purchases"] == truth["purchases"]
        assert m["revenue"] == pytest.approx(truth["revenue"], abs=0.05)
        assert 0 < truth["expected_conversion_rate"] < 1
    assert set(body["truth"]) == {"als", "popularity"}
    assert measured["srm"]["mismatch"] is False
    assert "true conversion per variant" in format_result(body)


def test_traffic_names_a_service_that_is_not_running(served_settings: Settings) -> None:
    config = TrafficConfig(recommender_url="http://127.0.0.1:9", data_dir=served_settings.data_dir,
                           minutes=0.05, progress=False)
    with pytest.raises(MLSuiteError, match="recommender at http://127.0.0.1:9 is not answering"):
        run_traffic(config, say=lambda _m: None)
