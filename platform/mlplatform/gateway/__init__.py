"""The gateway: HAProxy in front of several replicas of each service, on one port.

``mlsuite gateway config`` writes the HAProxy configuration (``haproxy``: routes,
health checks, retries, limits); ``mlsuite up --replicas N`` starts N replicas of each
app service, their workers, the console, GraphQL and HAProxy on this machine (``up``).

Public names: ``GatewayConfig``, ``Server``, ``render``, ``check_config``,
``find_haproxy``, ``RETRY_SAFE``.
"""

from mlplatform.gateway.haproxy import (
    RETRY_SAFE,
    GatewayConfig,
    Server,
    check_config,
    find_haproxy,
    render,
)

__all__ = ["RETRY_SAFE", "GatewayConfig", "Server", "check_config", "find_haproxy", "render"]
