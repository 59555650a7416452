"""fraud: real-time transaction fraud scoring on the mlsuite platform.

A payment flow posts each transaction and gets back a score in [0, 1], a decision
(approve / review / decline), the reasons and the model version, in milliseconds.
Late labels (chargebacks, analyst verdicts) go to a Redis stream that every replica
learns from in order, so all replicas hold the same online model.

Modules, one concept each:

- ``schema``: the transaction schema and its validation; ``config``: fraud settings
- ``velocity``: per card / device / merchant velocity (Redis online, in memory offline)
- ``profiles``: Feast card and merchant profiles behind a TTL cache
- ``features``: the feature vector; ``models``: online river and batch scikit-learn models;
  ``predictors``: the immutable scoring + explaining functions serving uses
- ``thresholds``: review / decline cut-offs from target false-positive rates
- ``drift``: ADWIN drift detection and rolling quality as labels arrive
- ``decisions``: the decision log; ``labels``: the label stream; ``learner``: the
  per-process online learner with snapshots
- ``service``: the scorer (no HTTP); ``app``: the Flask service (``create_app``)
- ``training``, ``replay``, ``bench``, ``cli``: ``mlsuite fraud train|replay|bench``

Public names: ``create_app`` (in ``fraud.app``), ``cli`` and ``ensure_model``
(in ``fraud.cli``). Importing this package loads no model and opens no connection.
"""

__all__: list[str] = []
