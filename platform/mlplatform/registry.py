"""Model registry: versioned artifacts with metadata, and named aliases that move.

Layout under ``root`` (``<data_dir>/models``; a shared volume in production)::

    <name>/versions/<N>/            artifacts written by the trainer + metadata.json
                                    (+ model_card.md; lineage in metadata when given)
    <name>/aliases.json             {"aliases": {"production": 3}, "previous": {"production": [1, 2]}}
    <name>/history.jsonl            one line per alias move (who moved what, when)

A version appears atomically (written to a temporary folder, then renamed), so a reader
never sees half an artifact. Promotion moves an alias and remembers the version it
replaced; rollback moves it back. A canary serves the ``candidate`` alias to a fixed
share of units (``set_rollout``). Running services hold a ``LiveModel`` (or a
``RolloutModel``) that notices a moved alias and swaps between requests.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from mlplatform.assignment import in_rollout
from mlplatform.config import source_root
from mlplatform.errors import BadRequest, NotFound, Unavailable
from mlplatform.lifecycle import file_lock

__all__ = ["ModelRegistry", "ModelVersion", "LiveModel", "RolloutModel", "fingerprint",
           "code_version"]

log = logging.getLogger(__name__)
T = TypeVar("T")
MODEL_CARD_FILE = "model_card.md"


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its folder and its metadata."""

    name: str
    version: int
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        return f"{self.name}:v{self.version}"

    @property
    def model_card(self) -> str | None:
        """The version's model card (Markdown), if it was registered with one."""
        path = self.path / MODEL_CARD_FILE
        return path.read_text() if path.is_file() else None


class ModelRegistry:
    """Versions and aliases of named models, in a folder shared by every replica."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- writing -------------------------------------------------------------------------

    def register(self, name: str, *, writer: Callable[[Path], None], params: dict[str, Any],
                 metrics: dict[str, Any], data_fingerprint: str,
                 alias: str | None = None, lineage: Mapping[str, Any] | None = None,
                 model_card: str | None = None) -> ModelVersion:
        """Store a new version: ``writer`` fills a folder with the artifacts.

        ``lineage`` (the inputs it was trained on, with fingerprints and row counts) goes
        into ``metadata["lineage"]``; ``model_card`` (Markdown) into ``model_card.md``.
        """
        model_dir = self._model_dir(name, create=True)
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            writer(tmp)
            if model_card is not None:
                (tmp / MODEL_CARD_FILE).write_text(model_card)
            with self._lock(name):
                version = max((v.version for v in self.versions(name)), default=0) + 1
                metadata = {
                    "name": name,
                    "version": version,
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "params": params,
                    "metrics": metrics,
                    "data_fingerprint": data_fingerprint,
                    "code_version": code_version(),
                    "files": sorted(p.name for p in tmp.iterdir()),
                }
                if lineage is not None:
                    metadata["lineage"] = dict(lineage)
                (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2, default=str))
                (model_dir / "versions").mkdir(exist_ok=True)
                os.rename(tmp, model_dir / "versions" / str(version))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("registered %s:v%d", name, version)
        if alias:
            self.set_alias(name, alias, version)
        return self.get(name, version)

    def set_alias(self, name: str, alias: str, version: int, *, action: str = "set") -> None:
        """Point ``alias`` at ``version``, remembering the version it pointed at."""
        self.get(name, version)  # must exist
        with self._lock(name):
            state = self._read_aliases(name)
            current = state["aliases"].get(alias)
            if current == version:
                return
            if current is not None and action != "rollback":
                state["previous"].setdefault(alias, []).append(current)
            state["aliases"][alias] = version
            self._write_aliases(name, state)
            self._log_move(name, {"alias": alias, "from": current, "to": version, "action": action})
        log.info("%s: alias %s %s -> v%d", name, alias, f"v{current}" if current else "(none)", version)

    def promote(self, name: str, version: int, alias: str = "production") -> ModelVersion:
        """Point ``alias`` at ``version``; promoting to production ends any canary."""
        self.set_alias(name, alias, version, action="promote")
        if alias == "production" and self.rollout(name)[1] > 0:
            self.set_rollout(name, 0.0)
        return self.get(name, version)

    def set_rollout(self, name: str, fraction: float, version: int | None = None) -> None:
        """Canary: serve the ``candidate`` alias (moved to ``version`` if given) to a share of units.

        The share is chosen by ``mlplatform.assignment.in_rollout`` with the model's name as
        salt, so a unit in a 5% canary stays in it at 20%, and never flips back and forth.
        """
        if not 0.0 <= fraction <= 1.0:
            raise BadRequest(f"fraction must be a number in [0, 1], got {fraction!r}",
                             field="fraction")
        if version is not None:
            self.set_alias(name, "candidate", version, action="canary")
        with self._lock(name):
            state = self._read_aliases(name)
            if fraction > 0 and "candidate" not in state["aliases"]:
                raise NotFound(f"{name}: a canary needs a 'candidate' alias", field="version")
            state["rollout"] = {"alias": "candidate", "fraction": fraction}
            self._write_aliases(name, state)
            self._log_move(name, {"alias": "candidate", "rollout": fraction, "action": "rollout"})
        log.info("%s: canary candidate at %.1f%%", name, 100 * fraction)

    def rollout(self, name: str) -> tuple[str, float]:
        """The canary alias and the share of units it serves (0.0: no canary)."""
        rollout = self._read_aliases(name).get("rollout") or {}
        return str(rollout.get("alias", "candidate")), float(rollout.get("fraction", 0.0))

    def rollback(self, name: str, alias: str = "production") -> ModelVersion:
        """Move ``alias`` back to the version it pointed at before its last move."""
        with self._lock(name):
            state = self._read_aliases(name)
            stack = state["previous"].get(alias, [])
            if not stack:
                raise NotFound(f"{name}: alias {alias!r} has no earlier version to roll back to",
                               field="alias")
            target = stack.pop()
            current = state["aliases"].get(alias)
            state["aliases"][alias] = target
            self._write_aliases(name, state)
            self._log_move(name, {"alias": alias, "from": current, "to": target, "action": "rollback"})
        log.info("%s: rolled back %s v%s -> v%d", name, alias, current, target)
        return self.get(name, target)

    # -- reading -------------------------------------------------------------------------

    def get(self, name: str, version: int) -> ModelVersion:
        path = self.root / name / "versions" / str(version)
        try:
            metadata = json.loads((path / "metadata.json").read_text())
        except FileNotFoundError:
            raise NotFound(f"model {name!r} has no version {version}", field="version") from None
        return ModelVersion(name, int(version), path, metadata)

    def resolve(self, name: str, ref: str) -> ModelVersion:
        """A version by alias (``production``) or number (``3`` or ``v3``)."""
        text = ref.removeprefix("v")
        if text.isdigit():
            return self.get(name, int(text))
        version = self.aliases(name).get(ref)
        if version is None:
            raise NotFound(f"model {name!r} has no alias {ref!r}", field="alias")
        return self.get(name, version)

    def versions(self, name: str) -> list[ModelVersion]:
        folder = self.root / name / "versions"
        if not folder.is_dir():
            return []
        found = [self.get(name, int(p.name)) for p in folder.iterdir() if p.name.isdigit()]
        return sorted(found, key=lambda v: v.version)

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self._read_aliases(name)["aliases"])

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir())

    def live(self, name: str, alias: str, loader: Callable[[ModelVersion], T], *,
             poll_seconds: float = 1.0,
             on_swap: Callable[[ModelVersion, T], None] | None = None) -> LiveModel[T]:
        return LiveModel(self, name, alias, loader, poll_seconds=poll_seconds, on_swap=on_swap)

    def live_rollout(self, name: str, loader: Callable[[ModelVersion], T], *,
                     poll_seconds: float = 1.0) -> RolloutModel[T]:
        """Production for most units, the canary candidate for its share of them."""
        return RolloutModel(self, name, loader, poll_seconds=poll_seconds)

    # -- internals -----------------------------------------------------------------------

    def _model_dir(self, name: str, create: bool = False) -> Path:
        path = self.root / name
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        # A file lock, so trainers and operators on several machines sharing the
        # folder never hand out one version number twice or lose an alias move.
        with file_lock(self._model_dir(name, create=True) / ".lock"):
            yield

    def _read_aliases(self, name: str) -> dict[str, Any]:
        try:
            state = json.loads((self.root / name / "aliases.json").read_text())
        except FileNotFoundError:
            state = {}
        state.setdefault("aliases", {})
        state.setdefault("previous", {})
        return state

    def _write_aliases(self, name: str, state: dict[str, Any]) -> None:
        target = self.root / name / "aliases.json"
        tmp = target.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, target)  # readers see the old file or the new one, never half

    def _log_move(self, name: str, entry: dict[str, Any]) -> None:
        entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}
        with open(self.root / name / "history.jsonl", "a") as handle:
            handle.write(json.dumps(entry) + "\n")


class LiveModel(Generic[T]):
    """The loaded model an alias points at, swapped in the background when the alias moves.

    Requests call ``get()``, which never waits for a load once a model is there: a
    background thread polls the alias, loads the new version fully, then swaps one
    reference, so in-flight requests finish on the old model and none fails.
    """

    def __init__(self, registry: ModelRegistry, name: str, alias: str,
                 loader: Callable[[ModelVersion], T], *, poll_seconds: float = 1.0,
                 on_swap: Callable[[ModelVersion, T], None] | None = None) -> None:
        self.registry, self.name, self.alias = registry, name, alias
        self.loader, self.poll_seconds, self.on_swap = loader, poll_seconds, on_swap
        self._current: tuple[ModelVersion, T] | None = None
        self._load_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def get(self) -> tuple[ModelVersion, T]:
        current = self._current
        if current is None:
            current = self.refresh()
            self._start_polling()
            if current is None:
                raise Unavailable(
                    f"no model {self.name!r} at alias {self.alias!r}: train one with "
                    f"`mlsuite {self.name.split('-')[0]} train`",
                    dependency="model",
                )
        return current

    def refresh(self) -> tuple[ModelVersion, T] | None:
        """Load the alias's version now if it differs from the one held; return the current."""
        with self._load_lock:
            version = self.registry.aliases(self.name).get(self.alias)
            if version is None:
                return self._current
            if self._current is not None and self._current[0].version == version:
                return self._current
            model_version = self.registry.get(self.name, version)
            started = time.perf_counter()
            obj = self.loader(model_version)
            self._current = (model_version, obj)
            log.info("%s: serving %s (loaded in %.2fs)", self.alias, model_version.label,
                     time.perf_counter() - started)
            if self.on_swap is not None:
                self.on_swap(model_version, obj)
            return self._current

    def stop(self) -> None:
        self._stop.set()

    def _start_polling(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name=f"live-{self.name}", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(max(self.poll_seconds, 0.01)):
            try:
                self.refresh()
            except Exception:  # keep serving the old model; say why
                log.exception("%s: could not load the new version of alias %s", self.name, self.alias)


class RolloutModel(Generic[T]):
    """Production and, while a canary runs, the candidate: ``get(unit_id)`` picks one.

    Both stay loaded, so promoting the candidate (blue-green) swaps instantly; a canary
    unit is chosen by the deterministic hash, the same on every replica.
    """

    def __init__(self, registry: ModelRegistry, name: str, loader: Callable[[ModelVersion], T],
                 *, poll_seconds: float = 1.0) -> None:
        self.registry, self.name, self.poll_seconds = registry, name, poll_seconds
        self.production = registry.live(name, "production", loader, poll_seconds=poll_seconds)
        self.candidate = registry.live(name, "candidate", loader, poll_seconds=poll_seconds)
        self._fraction = 0.0
        self._checked = 0.0

    def get(self, unit_id: str | None = None) -> tuple[ModelVersion, T]:
        if unit_id is not None and self.fraction() > 0 and in_rollout(self.name, unit_id, self._fraction):
            try:
                return self.candidate.get()
            except Unavailable:
                pass  # the candidate is still loading or gone: production serves
        return self.production.get()

    def fraction(self) -> float:
        now = time.monotonic()
        if now - self._checked >= self.poll_seconds:
            self._checked = now
            self._fraction = self.registry.rollout(self.name)[1]
        return self._fraction

    def stop(self) -> None:
        self.production.stop()
        self.candidate.stop()


def fingerprint(*items: Path | str | bytes) -> str:
    """A short content hash of files (by path) and byte strings, for model metadata.

    >>> fingerprint(b"abc") == fingerprint(b"abc") != fingerprint(b"abd")
    True
    """
    digest = hashlib.sha256()
    for item in items:
        if isinstance(item, bytes):
            digest.update(item)
            continue
        with open(item, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


@functools.cache
def code_version() -> str:
    """The git commit the code runs from, else the package version."""
    try:
        out = subprocess.run(["git", "-C", str(source_root()), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=2, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from mlplatform import __version__
        return __version__
