"""Backup and restore: the data folder (model registry, Feast registry and SQLite online
store, simulated or real source data, the lake, the signing key) and the Redis state,
in one folder with a manifest of every file's size and SHA-256.

Layout of a backup folder::

    manifest.json        what, when, from where; every file below with size and sha256
    data/...             the data folder's files (minus redis/ and run/)
    lake/...             the lake, when MLSUITE_LAKE_DIR puts it outside the data folder
    redis.dump           every key of the suite's Redis database: DUMP payload + PTTL

Redis is copied key by key (SCAN, then DUMP and PTTL in pipelined batches; RESTORE on
the way back) rather than as an RDB file from BGSAVE: it needs no access to the
server's disk (managed Redis, another machine), works the same against each node of a
Redis Cluster, restores into any topology, and leaves out what must not come back
(worker heartbeats, the console's posted-alert marks). The price: it is not one point
in time. A key written while the scan runs is saved as it was when the scan reached it,
so a backup taken under traffic may hold a stream entry without the velocity update of
the same request, or the reverse; take it with the services stopped (or quiet) for an
exact copy.
Streams keep their consumer groups and pending entries (DUMP carries them). SQLite
files are copied through SQLite's backup API, so a file being written is still copied
whole.

``restore`` verifies first, refuses a folder or Redis database that is not empty unless
``force``, copies the files, then RESTOREs the keys (with their remaining TTL).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import sqlite3
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import redis

from mlplatform.config import Settings
from mlplatform.errors import MLSuiteError

__all__ = ["BackupError", "Problem", "create_backup", "verify_backup", "restore_backup",
           "EXCLUDED_DIRS", "SKIPPED_KEYS", "MANIFEST"]

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
REDIS_FILE = "redis.dump"
# The embedded Redis's own files are covered by the dump; run/ holds live processes' state.
EXCLUDED_DIRS = ("redis", "run")
# Worker heartbeats describe running processes, not state: restored, they would name
# workers that are gone. The console's "alert already posted" marks (24 h TTL) would
# keep an alert still firing after a restore from being posted again: after a
# disaster it should be. (Leases are kept: a restored one expires within its TTL.)
SKIPPED_KEYS = (b"mlsuite:worker:", b"mlsuite:console:alert:")
BATCH = 500
_SQLITE_MAGIC = b"SQLite format 3\x00"
_RECORD = struct.Struct(">IqI")  # key length, PTTL in ms (-1: none), payload length


class BackupError(MLSuiteError):
    """A backup that cannot be made, trusted or restored; the message says why."""


@dataclass
class Problem:
    """One file of a backup that does not match its manifest."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Report:
    """What a create or restore did, for the log and the CLI."""

    files: int = 0
    bytes: int = 0
    keys: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.files} files ({self.bytes / 1e6:.1f} MB), {self.keys} Redis keys "
                f"in {self.seconds:.1f} s")


def _lake_outside(settings: Settings) -> Path | None:
    lake = settings.lake_dir
    if lake is None:
        return None
    lake, data = Path(lake).resolve(), Path(settings.data_dir).resolve()
    return None if lake == data / "lake" or data in lake.parents else lake


def _files(root: Path, excluded: tuple[str, ...] = ()) -> Iterator[Path]:
    """Regular files under ``root`` (not following links), sorted, minus ``excluded`` tops."""
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in excluded or path.is_symlink() or not path.is_file():
            continue
        yield path


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fh:
        is_sqlite = fh.read(16) == _SQLITE_MAGIC
    if is_sqlite:  # a consistent copy even while a process writes it
        with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as source, \
                sqlite3.connect(dst) as target:
            source.backup(target)
        source.close()
        target.close()
        shutil.copymode(src, dst)
    else:
        shutil.copy2(src, dst)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _redis_for(settings: Settings) -> tuple[redis.Redis, Any]:
    """A client on the suite's Redis, and the embedded server started for it (or None)."""
    from mlplatform.redisdb import EmbeddedRedis, connect

    if settings.redis_url:
        return connect(settings.redis_url, socket_timeout=30), None
    server = EmbeddedRedis(settings.data_dir)
    url = server.start()
    return connect(url, socket_timeout=30), server


def _key_count(client: redis.Redis) -> int:
    """Keys in the database; on a cluster, on every master (DBSIZE asks one node)."""
    from redis.cluster import RedisCluster

    from mlplatform.redisdb import is_cluster

    if is_cluster(client):
        return int(client.dbsize(target_nodes=RedisCluster.PRIMARIES))
    return int(client.dbsize())


def _redact(url: str | None) -> str:
    if not url:
        return "embedded"
    head, sep, tail = url.rpartition("@")
    return f"{url.split('://')[0]}://***@{tail}" if sep else url


# -- Redis: DUMP / RESTORE ---------------------------------------------------------------

def dump_redis(client: redis.Redis, out: BinaryIO) -> int:
    """Write every key (minus ``SKIPPED_KEYS``) as (key, pttl, DUMP payload); the count."""
    count = 0
    started = time.monotonic()
    batch: list[bytes] = []

    def flush() -> int:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.pttl(key)
            pipe.dump(key)
        replies = pipe.execute()
        written = 0
        for key, pttl, payload in zip(batch, replies[::2], replies[1::2], strict=True):
            if payload is None:  # deleted or expired since the scan saw it
                continue
            out.write(_RECORD.pack(len(key), int(pttl), len(payload)))
            out.write(key)
            out.write(payload)
            written += 1
        batch.clear()
        return written

    for key in client.scan_iter(count=1000):
        if key.startswith(SKIPPED_KEYS):
            continue
        batch.append(key)
        if len(batch) >= BATCH:
            count += flush()
            if count % (BATCH * 20) == 0:
                log.info("redis: %d keys dumped (%.0f s)", count, time.monotonic() - started)
    if batch:
        count += flush()
    return count


def _records(path: Path) -> Iterator[tuple[bytes, int, bytes]]:
    with open(path, "rb") as fh:
        while header := fh.read(_RECORD.size):
            klen, pttl, plen = _RECORD.unpack(header)
            key, payload = fh.read(klen), fh.read(plen)
            if len(key) != klen or len(payload) != plen:
                raise BackupError(f"{path} is truncated")
            yield key, pttl, payload


def load_redis(client: redis.Redis, path: Path, *, replace: bool) -> int:
    """RESTORE every key of ``path`` with its remaining TTL; the number restored."""
    count = 0
    pipe = client.pipeline(transaction=False)
    for key, pttl, payload in _records(path):
        # PTTL -1: no expiry (RESTORE's 0). A TTL counts again from the restore: a
        # velocity window or a lease-like key lives out the rest it had at the backup.
        pipe.restore(key, max(pttl, 0), payload, replace=replace)
        count += 1
        if count % BATCH == 0:
            pipe.execute()
            if count % (BATCH * 20) == 0:
                log.info("redis: %d keys restored", count)
    pipe.execute()
    return count


# -- create / verify / restore -----------------------------------------------------------

def create_backup(settings: Settings, target: Path) -> Report:
    """Back up ``settings``' data folder, lake and Redis into the new folder ``target``."""
    started = time.monotonic()
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"backup folder {target} is not empty: choose a new folder")
    data_dir = Path(settings.data_dir).resolve()
    if not data_dir.is_dir():
        raise BackupError(f"data folder {data_dir} does not exist: nothing to back up")
    if data_dir in target.resolve().parents:
        raise BackupError(f"backup folder {target} is inside the data folder {data_dir}")
    target.mkdir(parents=True, exist_ok=True)
    report = Report()
    sources: list[tuple[str, Path, tuple[str, ...]]] = [("data", data_dir, EXCLUDED_DIRS)]
    lake = _lake_outside(settings)
    if lake is not None:
        sources.append(("lake", lake, ()))
    client, server = _redis_for(settings)
    try:
        # Redis first: the files (models, Feast) then are at least as new as the keys
        # that point at them (a registry alias moved after the dump still finds its files).
        log.info("redis: dumping %s", _redact(settings.redis_url))
        with open(target / REDIS_FILE, "wb") as out:
            report.keys = dump_redis(client, out)
        redis_info = client.info("server")
    finally:
        client.close()
        if server is not None:
            server.stop()
    log.info("redis: %d keys", report.keys)
    for name, root, excluded in sources:
        for src in _files(root, excluded):
            _copy(src, target / name / src.relative_to(root))
            report.files += 1
            if report.files % 200 == 0:
                log.info("files: %d copied", report.files)
    entries = []
    for path in _files(target):
        rel = path.relative_to(target).as_posix()
        size = path.stat().st_size
        entries.append({"path": rel, "size": size, "sha256": sha256(path)})
        report.bytes += size
    manifest = {
        "format": FORMAT,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "data_dir": str(data_dir),
        "lake_dir": str(lake) if lake else None,
        "redis": {"url": _redact(settings.redis_url), "keys": report.keys,
                  "version": redis_info.get("redis_version")},
        "files": entries,
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    # The backup holds the signing key and every id the services saw: owner-only.
    os.chmod(target, 0o700)
    report.seconds = time.monotonic() - started
    log.info("backup %s: %s", target, report.summary())
    return report


def read_manifest(backup: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((Path(backup) / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{backup} is not a backup: no {MANIFEST}") from None
    except ValueError as exc:
        raise BackupError(f"{backup}/{MANIFEST} is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{backup}: backup format {manifest.get('format')!r} is not "
                          f"{FORMAT}, which this version reads")
    return manifest


def verify_backup(backup: Path) -> list[Problem]:
    """Recompute every file's size and SHA-256; the files that do not match (or are
    missing, or are not in the manifest). An empty list: the backup is intact."""
    backup = Path(backup)
    manifest = read_manifest(backup)
    problems = []
    listed = set()
    for n, entry in enumerate(manifest["files"], 1):
        path = backup / entry["path"]
        listed.add(entry["path"])
        if not path.is_file():
            problems.append(Problem(entry["path"], "missing"))
        elif path.stat().st_size != entry["size"]:
            problems.append(Problem(entry["path"], f"size {path.stat().st_size}, "
                                                   f"manifest says {entry['size']}"))
        elif sha256(path) != entry["sha256"]:
            problems.append(Problem(entry["path"], "sha256 differs from the manifest"))
        if n % 500 == 0:
            log.info("verify: %d of %d files checked", n, len(manifest["files"]))
    for path in _files(backup):
        rel = path.relative_to(backup).as_posix()
        if rel != MANIFEST and rel not in listed:
            problems.append(Problem(rel, "not in the manifest"))
    return problems


def restore_backup(backup: Path, settings: Settings, *, force: bool = False) -> Report:
    """Restore ``backup`` into ``settings``' data folder (and lake, and Redis)."""
    started = time.monotonic()
    backup = Path(backup)
    problems = verify_backup(backup)
    if problems:
        listed = "; ".join(map(str, problems[:5]))
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise BackupError(f"{backup} fails verification, not restoring: {listed}{more}")
    manifest = read_manifest(backup)
    data_dir = Path(settings.data_dir).resolve()
    lake = settings.lake_dir if manifest.get("lake_dir") else None
    if manifest.get("lake_dir") and lake is None:
        raise BackupError("this backup's lake was outside its data folder: set "
                          "MLSUITE_LAKE_DIR to where the lake should go")
    for folder in [data_dir] + ([Path(lake)] if lake else []):
        leftovers = [p for p in _files(folder)] if folder.exists() else []
        if leftovers and not force:
            raise BackupError(f"{folder} is not empty ({len(leftovers)} files, e.g. "
                              f"{leftovers[0]}): restore into an empty folder, or pass "
                              f"--force to overwrite")
    report = Report()
    client, server = _redis_for(settings.with_(data_dir=data_dir))
    try:
        size = _key_count(client)
        if size and not force:
            raise BackupError(f"the Redis database to restore into holds {size} keys: "
                              f"restore into an empty one, or pass --force to replace "
                              f"keys of the same name")
        for entry in manifest["files"]:
            top, _, rel = entry["path"].partition("/")
            if top not in ("data", "lake"):
                continue
            dst = (data_dir if top == "data" else Path(lake or data_dir)) / rel
            _copy(backup / entry["path"], dst)
            report.files += 1
            report.bytes += entry["size"]
            if report.files % 200 == 0:
                log.info("files: %d of %d restored", report.files, len(manifest["files"]))
        log.info("redis: restoring %d keys", manifest["redis"]["keys"])
        report.keys = load_redis(client, backup / REDIS_FILE, replace=force)
        # Count the dump too, so a restore's summary reads like its backup's.
        report.bytes += (backup / REDIS_FILE).stat().st_size
    finally:
        client.close()
        if server is not None:
            server.stop()  # SHUTDOWN writes the append-only file: the state is on disk
    report.seconds = time.monotonic() - started
    log.info("restore from %s: %s", backup, report.summary())
    return report
