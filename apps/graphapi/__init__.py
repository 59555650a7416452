"""graphapi: the GraphQL service over both models (Strawberry, ASGI under granian).

It calls the recommender and the fraud service over HTTP, never by importing them, and
reads the Redis streams for subscriptions. Named ``graphapi``, never ``graphql``: that
name would shadow graphql-core.

Modules, one concept each:

- ``app``: the ASGI app factory (``graphapi.app:create_app`` -> ``mlsuite serve graphql``),
  the request context, /healthz, /readyz, /metrics
- ``schema``: queries, mutations, subscriptions; ``types``: object and input types
- ``upstream``: the pooled HTTP client and the typed upstream errors
- ``loaders``: per-request DataLoaders onto the services' batch endpoints, and Feast
- ``streams``: one Redis stream reader per process, fanned out to subscriptions
- ``limits``: the cost and batch-size limit; ``telemetry``: metrics
- ``context``: what resolvers get; ``sdl``: write or check ``schema.graphql``
"""

__all__ = ["SDL_FILE"]

SDL_FILE = "schema.graphql"  # the committed SDL, package data beside this file
