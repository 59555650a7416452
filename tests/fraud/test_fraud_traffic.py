"""The traffic simulator's payments against a real fraud service over HTTP: every payment
gets its own transaction id, is scored, and its label comes back later."""

from __future__ import annotations

import threading
from collections.abc import Callable

from flask import Flask
from werkzeug.serving import make_server

from mlplatform.config import Settings
from mlplatform.simulate.traffic import Payments, TrafficResult, _Http, _transactions


def test_simulated_payments_each_get_a_new_id_and_are_scored(
        make_app: Callable[..., Flask], fraud_settings: Settings) -> None:
    server = make_server("127.0.0.1", 0, make_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        http = _Http(f"http://127.0.0.1:{server.server_port}")
        result, lock = TrafficResult(), threading.Lock()
        payments = Payments(_transactions(fraud_settings.data_dir, 5, n=200), http, result, lock)
        for seed in range(30):
            payments.pay(seed)
        assert result.errors == {}, result.errors  # a reused id would be a 409
        assert payments.stats["scored"] == 30
        assert sum(payments.stats["decisions"].values()) == 30
        # Some payments get a label later (chargebacks, confirmations); those post now.
        labelled = [tx_id for _due, tx_id, _fraud in payments.pending]
        assert labelled and len(set(labelled)) == len(labelled)
        payments.post_due(everything=True)
        assert result.errors == {} and payments.stats["labels"] == len(labelled)
    finally:
        server.shutdown()
        thread.join(5)
