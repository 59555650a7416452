# mlsuite: `make demo` runs the whole suite embedded; `make test` runs the tests.
# Both create .venv and install into it when needed; only python3 (>= 3.11) and make are required.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export OPENBLAS_NUM_THREADS := 1

.PHONY: help demo test test-cluster bench loadtest lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing mlsuite and its dependencies into $(VENV) (first run: about a minute)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -e ".[dev]"
	@touch $@

demo: $(STAMP)  ## simulate data, start Redis, Feast, train, serve both services (Ctrl-C stops)
	$(BIN)/mlsuite demo

test: $(STAMP)  ## run the test suite (real Redis, real Feast, real models), then its cluster pass
	$(BIN)/python -m pytest
	@$(MAKE) --no-print-directory test-cluster

# The Redis-touching modules again on a private three-master Redis Cluster (the session's
# Redis is one: MLSUITE_TEST_REDIS=cluster): the ones whose keys meet in a script, a MULTI
# or a consumer group's commit (streams, retention, experiments, rollouts, workers, API
# keys, the metrics' SCAN/INFO, snapshots; fraud velocity, lists, reviews, learner,
# decisions and their retention, rollout guard, profile updates, drift over the
# partitions; the recommender's live history, worker, attribution and business
# metrics). The modules written for a cluster (test_*cluster*.py) run in `pytest` above
# already. About 2 minutes on 2 cores.
CLUSTER_TESTS := \
	tests/mlplatform/test_streams.py tests/mlplatform/test_retention.py \
	tests/mlplatform/test_experiments.py tests/mlplatform/test_rollouts.py \
	tests/mlplatform/test_rollouts_controller.py tests/mlplatform/test_worker.py \
	tests/mlplatform/test_auth.py tests/mlplatform/test_resource_metrics.py \
	tests/mlplatform/test_snapshots.py \
	tests/fraud/test_fraud_velocity.py tests/fraud/test_fraud_lists.py \
	tests/fraud/test_fraud_reviews.py tests/fraud/test_fraud_learner.py \
	tests/fraud/test_fraud_decision_retention.py tests/fraud/test_fraud_rollout.py \
	tests/fraud/test_fraud_profile_updates.py tests/fraud/test_drift_report.py \
	tests/recommender/test_recommender_history.py tests/recommender/test_recommender_worker.py \
	tests/recommender/test_recommender_attribution.py tests/recommender/test_business_metrics.py

test-cluster: $(STAMP)  ## the Redis-touching tests again on a three-master Redis Cluster
	MLSUITE_TEST_REDIS=cluster $(BIN)/python -m pytest -p no:cacheprovider $(CLUSTER_TESTS)

bench: $(STAMP)  ## measure both services against a bare Flask baseline on this machine
	$(BIN)/mlsuite bench --json reports/bench.json

loadtest: $(STAMP)  ## headless Locust runs against both services, CSV + HTML in reports/
	$(BIN)/mlsuite loadtest

lint: $(STAMP)  ## ruff and mypy
	$(BIN)/ruff check platform apps tests loadtests
	$(BIN)/mypy platform/mlplatform

clean:  ## remove the virtualenv, data and reports
	rm -rf $(VENV) data reports
