"""``mlsuite bench``'s GraphQL endpoints against the real GraphQL service: each request
answers without a GraphQL error, and a request that errors is refused before measuring
(GraphQL answers its errors with a 200, which the load generator alone would count)."""

from __future__ import annotations

import dataclasses

import pytest

from mlplatform.bench.harness import preflight
from mlplatform.bench.payloads import endpoints_for
from mlplatform.bench.report import REST_TWIN
from mlplatform.stack import Stack


def test_bench_graphql_endpoints_answer_without_errors(graph_stack: Stack,
                                                       api_keys: dict[str, str]) -> None:
    endpoints = endpoints_for(["graphql"], graph_stack.settings.data_dir)
    assert [e.name for e in endpoints] == list(REST_TWIN)
    port = graph_stack.ports["graphql"]
    auth = {"Authorization": f"Bearer {api_keys['admin']}"}
    for endpoint in endpoints:
        preflight(endpoint, "127.0.0.1", port, auth)
    broken = dataclasses.replace(endpoints[0], requests=(("/graphql", b'{"query": "{ nope }"}'),))
    with pytest.raises(RuntimeError, match="not measuring it"):
        preflight(broken, "127.0.0.1", port, auth)
    with pytest.raises(RuntimeError, match="401|UNAUTHORIZED|unauthorized|key"):
        preflight(endpoints[1], "127.0.0.1", port, {})
