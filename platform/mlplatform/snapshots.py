"""Snapshots: immutable state a worker publishes in Redis and request workers swap in.

A worker owns some state (an online model, live popularity, the catalogue's stock
flags) and publishes each new version of it under one key: a hash holding ``seq`` (a
counter), ``meta`` (JSON) and ``body`` (bytes), written in one transaction. Every
request worker on every replica runs a ``Follower``: a daemon thread that polls ``seq``
(one tiny command every ``poll_seconds``), fetches and decodes a new body off the
request path, and swaps one reference; requests read ``follower.get()`` without locks.

What Redis hands back is never unpickled unless signed. Bodies are plain data:
``pack_arrays`` / ``unpack_arrays`` (numpy's format with pickling disabled, plus JSON)
for arrays, or JSON. A worker's own checkpoint of a full model, which needs pickle,
is signed: ``sign`` adds an HMAC-SHA256 over the bytes with the deployment's secret
(``secret_key``) and ``verify`` refuses anything whose signature does not match before
``pickle.loads`` ever sees it.

>>> body = pack_arrays({"w": np.arange(3.0)}, {"version": 2})
>>> arrays, meta = unpack_arrays(body)
>>> arrays["w"].tolist(), meta
([0.0, 1.0, 2.0], {'version': 2})
>>> key = b"k" * 32
>>> verify(sign(b"state", key), key)
b'state'
>>> verify(b"x" * 40, key)
Traceback (most recent call last):
...
mlplatform.snapshots.SignatureError: snapshot signature does not match: refusing to load it
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import redis

from mlplatform.errors import MLSuiteError
from mlplatform.lifecycle import local_secret

if TYPE_CHECKING:
    from mlplatform.config import Settings

__all__ = [
    "Snapshot",
    "SnapshotStore",
    "Follower",
    "SignatureError",
    "pack_arrays",
    "unpack_arrays",
    "sign",
    "verify",
    "dumps_signed",
    "loads_signed",
    "secret_key",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
_MAC = hashlib.sha256().digest_size


class SignatureError(MLSuiteError):
    """A signed blob whose signature does not match: tampered with, or another key."""


@dataclass(frozen=True)
class Snapshot:
    """One published version: its sequence number, metadata and body."""

    seq: int
    meta: dict[str, Any]
    body: bytes


class SnapshotStore:
    """Publishes and reads the snapshots under one Redis key."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key

    def publish(self, body: bytes, meta: Mapping[str, Any] | None = None) -> int:
        """Write a new version (body and meta together); its sequence number."""
        tx = self.client.pipeline(transaction=True)
        tx.hincrby(self.key, "seq", 1)
        tx.hset(self.key, mapping={"meta": json.dumps(dict(meta or {}), default=str),
                                   "body": body, "at": f"{time.time():.3f}"})
        seq = int(tx.execute()[0])
        return seq

    def publish_changed(self, body: bytes, meta: Mapping[str, Any] | None, *, digest: str,
                        refresh_seconds: float = 60.0) -> int | None:
        """``publish`` unless the current snapshot has the same ``digest`` and is younger
        than ``refresh_seconds`` (then None): every replica decodes each new version, so
        an unchanged state is not handed to them again every period. The digest is kept
        with the snapshot, so several publishing workers agree on it."""
        current: Any = self.client.hmget(self.key, ["digest", "at"])
        previous, at = current
        if previous is not None and previous.decode() == digest and at is not None \
                and time.time() - float(at) < refresh_seconds:
            return None
        seq = self.publish(body, meta)
        self.client.hset(self.key, "digest", digest)
        return seq

    def seq(self) -> int:
        raw: Any = self.client.hget(self.key, "seq")
        return int(raw) if raw else 0

    def read(self) -> Snapshot | None:
        reply: Any = self.client.hmget(self.key, ["seq", "meta", "body"])
        seq, meta, body = reply
        if seq is None or body is None:
            return None
        return Snapshot(int(seq), json.loads(meta or b"{}"), bytes(body))

    def clear(self) -> None:
        self.client.delete(self.key)


class Follower(Generic[T]):
    """The latest decoded snapshot of a key, refreshed by a background thread.

    ``decode(snapshot)`` turns a body into the object requests use (or raises: the old
    object is kept and the failure logged once per sequence number). ``on_swap`` runs
    after each swap (metrics, logs).
    """

    def __init__(self, store: SnapshotStore, decode: Callable[[Snapshot], T], *,
                 poll_seconds: float = 0.25, name: str = "snapshot",
                 on_swap: Callable[[Snapshot, T], None] | None = None) -> None:
        self.store = store
        self.decode = decode
        self.poll_seconds = poll_seconds
        self.name = name
        self.on_swap = on_swap
        self._current: tuple[Snapshot, T] | None = None
        self._failed_seq = -1
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()

    def get(self) -> T | None:
        """The current object (None before any snapshot was published)."""
        if self._pid != os.getpid():  # first use in this (possibly forked) process
            self.start()
        current = self._current
        return None if current is None else current[1]

    @property
    def seq(self) -> int:
        current = self._current
        return 0 if current is None else current[0].seq

    @property
    def snapshot(self) -> Snapshot | None:
        current = self._current
        return None if current is None else current[0]

    def refresh(self) -> bool:
        """Load a newer snapshot now if there is one; whether a swap happened."""
        with self._lock:
            seq = self.store.seq()
            if seq == 0 or seq == self.seq or seq == self._failed_seq:
                return False
            snapshot = self.store.read()
            if snapshot is None:
                return False
            try:
                obj = self.decode(snapshot)
            except Exception as exc:  # noqa: BLE001 - keep serving the last good state
                self._failed_seq = snapshot.seq
                log.error("%s: cannot load snapshot %d of %s, keeping %d: %s", self.name,
                          snapshot.seq, self.store.key, self.seq, exc)
                return False
            self._current = (snapshot, obj)
        if self.on_swap is not None:
            self.on_swap(snapshot, obj)
        return True

    def start(self) -> None:
        """Load what is there now, then follow in a daemon thread (once per process)."""
        if self._pid == os.getpid():
            return
        with self._start_lock:  # two first requests at once start one thread
            if self._pid == os.getpid():
                return
            self._stop = threading.Event()
            try:
                self.refresh()
            except redis.RedisError as exc:
                log.warning("%s: redis unavailable at start (%s); following in the background",
                            self.name, exc)
            self._thread = threading.Thread(target=self._run, name=f"follow-{self.name}",
                                            daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
                failing = False
            # A cluster client's own failures (closed, no node answering) are not
            # RedisErrors: the thread must outlive them too, or the worker stops following.
            except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
                if not failing:
                    log.warning("%s: redis unavailable (%s); serving the last snapshot",
                                self.name, exc)
                failing = True


# -- plain-data bodies ---------------------------------------------------------------------

def pack_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> bytes:
    """Arrays (numeric, bool or fixed-width text) and JSON metadata as one bytes body."""
    buffer = io.BytesIO()
    payload = {f"a_{k}": np.asarray(v) for k, v in arrays.items()}
    payload["__meta__"] = np.frombuffer(json.dumps(dict(meta or {}), default=str).encode(),
                                        dtype=np.uint8)
    np.savez(buffer, **payload)  # type: ignore[arg-type]
    return buffer.getvalue()


def unpack_arrays(body: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The inverse of ``pack_arrays``; never unpickles (object arrays are refused)."""
    with np.load(io.BytesIO(body), allow_pickle=False) as data:
        arrays = {k[2:]: data[k] for k in data.files if k.startswith("a_")}
        meta = json.loads(bytes(data["__meta__"]).decode()) if "__meta__" in data.files else {}
    return arrays, meta


# -- signed blobs --------------------------------------------------------------------------

def sign(blob: bytes, key: bytes) -> bytes:
    """``blob`` with an HMAC-SHA256 of it in front."""
    return hmac.new(key, blob, hashlib.sha256).digest() + blob


def verify(signed: bytes, key: bytes) -> bytes:
    """The blob inside ``signed`` if its HMAC matches ``key``, else ``SignatureError``."""
    mac, blob = signed[:_MAC], signed[_MAC:]
    if len(signed) < _MAC or not hmac.compare_digest(
            mac, hmac.new(key, blob, hashlib.sha256).digest()):
        raise SignatureError("snapshot signature does not match: refusing to load it")
    return blob


def dumps_signed(obj: Any, key: bytes) -> bytes:
    """Pickle ``obj`` and sign it (a worker's own checkpoint of a model)."""
    return sign(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), key)


def loads_signed(signed: bytes, key: bytes) -> Any:
    """Unpickle a ``dumps_signed`` blob after checking its signature (never before)."""
    return pickle.loads(verify(signed, key))  # noqa: S301 - verified above


def secret_key(settings: Settings) -> bytes:
    """The deployment's signing key: ``MLSUITE_SECRET_KEY``, else a random key created
    once in ``<data_dir>/secret.key`` (mode 0600) for the embedded setup."""
    if settings.secret_key:
        return settings.secret_key.encode()
    return local_secret(Path(settings.data_dir) / "secret.key")
