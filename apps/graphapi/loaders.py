"""DataLoaders: the lookups of one GraphQL request, grouped into as few upstream calls as possible.

A query naming N users (``users(ids: [...])``, aliases, or a list of fields) asks for N
recommendation lists; the loader collects them during one tick of the event loop and
sends one ``POST /v1/recommendations/batch`` per distinct ``(n, category, excludeSeen)``.
Items' catalogue entries (category, price, stock) are one batched Feast online read, the
system of record the recommender itself filters on. Similar items have no batch endpoint:
their loader removes duplicates and sends the distinct calls concurrently.

Loaders live for one request (a new ``Loaders`` per context): their cache never serves
one caller's answer to another, nor a stale answer to a later request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from strawberry.dataloader import DataLoader

from graphapi.upstream import Upstream, UpstreamUnavailable
from mlplatform.config import Settings

__all__ = ["Catalogue", "Loaders", "RecKey", "SimilarKey"]

log = logging.getLogger(__name__)

RecKey = tuple[str, int, str | None, bool]  # user id, n, category, exclude seen
SimilarKey = tuple[str, int, str | None]  # item id, n, category
ITEM_FEATURES = ["item_catalogue:in_stock", "item_catalogue:category", "item_catalogue:price"]
USERS_PER_CALL = 500  # below the recommender's default batch limit (1000)


class Catalogue:
    """Items' category, price and stock from Feast's online store (read in a thread:
    Feast is synchronous). ``import feast`` takes seconds: ``start`` does it off the
    request path, once per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Any = None
        self._error: str | None = None
        self._loaded = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._open, name="graphapi-feast", daemon=True).start()

    def _open(self) -> None:
        try:
            from mlplatform.features import FeatureStoreAdapter

            self._store = FeatureStoreAdapter.from_settings(self.settings)
            log.info("graphql: item catalogue from feast (%s online store)",
                     self._store.online_store_type)
        except Exception as exc:  # noqa: BLE001 - reported per query and on /readyz
            self._error = f"{type(exc).__name__}: {exc}"
            log.warning("graphql: no feast store, items will have no catalogue fields: %s",
                        self._error)
        finally:
            self._loaded.set()

    def status(self) -> str:
        if not self._loaded.is_set():
            return "loading"
        return "ok" if self._store is not None else f"unavailable: {self._error}"

    async def read(self, item_ids: Sequence[str]) -> list[dict[str, Any]]:
        loaded = await asyncio.to_thread(self._loaded.wait, 30.0)
        if not loaded or self._store is None:
            raise UpstreamUnavailable("feast", self._error or "feature store still loading")
        try:
            return await asyncio.to_thread(self._store.online_features, ITEM_FEATURES,
                                           [{"item_id": i} for i in item_ids])
        except Exception as exc:  # noqa: BLE001 - any Feast failure is the feast upstream's
            log.warning("graphql: feast item read failed: %s", exc)
            raise UpstreamUnavailable("feast", f"{type(exc).__name__}: {exc}") from exc


class Loaders:
    """The DataLoaders of one request, calling upstream with the caller's credentials."""

    def __init__(self, upstream: Upstream, catalogue: Catalogue,
                 authorization: Callable[[], str | None]) -> None:
        self.upstream = upstream
        self.catalogue = catalogue
        # Read at each call: a websocket's credentials arrive after the context is made.
        self.authorization = authorization
        self.recommendations: DataLoader[RecKey, Any] = DataLoader(self._recommendations)
        self.similar: DataLoader[SimilarKey, Any] = DataLoader(self._similar)
        self.items: DataLoader[str, Any] = DataLoader(self._items)

    async def call(self, service: str, method: str, path: str, *, endpoint: str,
                   json: Any = None, params: dict[str, Any] | None = None) -> Any:
        return await self.upstream.call(service, method, path, endpoint=endpoint, json=json,
                                        params=params, authorization=self.authorization())

    async def _recommendations(self, keys: list[RecKey]) -> list[Any]:
        groups: dict[tuple[int, str | None, bool], list[str]] = defaultdict(list)
        for user, n, category, exclude_seen in keys:
            groups[(n, category, exclude_seen)].append(user)
        found: dict[RecKey, Any] = {}
        calls = []
        for (n, category, exclude_seen), users in groups.items():
            for start in range(0, len(users), USERS_PER_CALL):
                chunk = users[start:start + USERS_PER_CALL]
                calls.append(((n, category, exclude_seen), chunk, self.call(
                    "recommender", "POST", "/v1/recommendations/batch",
                    endpoint="/v1/recommendations/batch",
                    json={"user_ids": chunk, "n": n, "category": category,
                          "exclude_seen": exclude_seen})))
        answers = await asyncio.gather(*(c for _, _, c in calls), return_exceptions=True)
        for (options, chunk, _), answer in zip(calls, answers, strict=True):
            for i, user in enumerate(chunk):
                if isinstance(answer, BaseException):
                    found[(user, *options)] = answer
                else:
                    result = answer["results"][i]
                    found[(user, *options)] = {
                        **result, "model": result.get("model") or answer.get("model"),
                        "degraded": answer.get("degraded", [])}
        return [found[k] for k in keys]

    async def _similar(self, keys: list[SimilarKey]) -> list[Any]:
        calls = [self.call("recommender", "GET", f"/v1/items/{quote(item, safe='')}/similar",
                           endpoint="/v1/items/<id>/similar",
                           params={"n": n, **({"category": category} if category else {})})
                 for item, n, category in keys]
        return list(await asyncio.gather(*calls, return_exceptions=True))

    async def _items(self, keys: list[str]) -> list[Any]:
        try:
            rows = await self.catalogue.read(keys)
        except UpstreamUnavailable as exc:
            return [exc] * len(keys)
        return rows
