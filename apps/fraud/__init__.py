"""fraud: real-time transaction fraud scoring on the mlsuite platform.

A payment flow posts each transaction and gets back a score in [0, 1], a decision
(approve / review / decline), the reasons and the model version, in milliseconds.
Late labels (chargebacks, analyst verdicts) go to a Redis stream; the fraud worker
(``mlsuite worker fraud``) learns them in order and publishes model snapshots that every
replica swaps in, so all replicas serve the same online model.

Modules, one concept each:

- ``schema``: the transaction schema and its validation; ``config``: fraud settings
- ``pii``: card and device ids as keyed tokens, at the edge and where files are read
- ``contract``: every endpoint's request and response type (``/openapi.json``)
- ``velocity``: per card / device / merchant velocity (Redis online, in memory offline)
- ``profiles``: Feast card and merchant profiles behind a TTL cache
- ``features``: the feature vector; ``models``: online river and batch scikit-learn models;
  ``predictors``: the immutable scoring + explaining functions serving uses
- ``thresholds``: review / decline cut-offs from target false-positive rates
- ``drift``: ADWIN drift detection and rolling quality as labels arrive
- ``decisions``: the decision log; ``labels``: the label stream; ``keys``: Redis names
- ``learner``: the worker's online learner (lease, checkpoints, snapshots);
  ``serving_state``: what request workers score with (registry version + snapshot)
- ``profile_updates``: card / merchant profile writes; ``profile_push``: the worker's
  batched Feast push and profile overrides; ``worker``: ``mlsuite worker fraud``
- ``service``: the scorer (no HTTP); ``app``: the Flask service (``create_app``)
- ``training``, ``replay``, ``bench``, ``cli``: ``mlsuite fraud train|replay|bench``

Public names: ``create_app`` (in ``fraud.app``), ``cli`` and ``ensure_model``
(in ``fraud.cli``). Importing this package loads no model and opens no connection.
"""

__all__: list[str] = []
