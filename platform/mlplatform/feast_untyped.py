"""Feast without typeguard's run-time instrumentation.

Feast decorates its API (about 250 functions and classes: ``FeatureStore``,
``FeatureView``, ``Entity``, ``get_online_features``...) with typeguard's
``@typechecked``. That decorator re-parses and recompiles each function's source when
the module is imported, which is 6 to 7 s of an 8 s ``import feast`` here, paid by every
process that reads features: each server worker at start, each CLI call, each test
worker. The checks then run on every call, a Feast read included. This is typeguard's
known cost (agronholm/typeguard#468); other Feast users patch it the same way.

``install`` (run when ``mlplatform.feast_config`` is imported, before anything imports
Feast) puts a finder on ``sys.meta_path``. The first time Feast is imported, the finder
swaps ``typeguard.typechecked`` for a version that leaves Feast's own functions as they
are. Every other user of typeguard gets the real decorator. The finder never loads
anything itself: it returns ``None``, and the normal import goes on. Feast behaves the
same with or without it: typeguard only adds checks that raise on arguments of the wrong
type, and our calls pass the right types (mypy checks them).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

__all__ = ["install"]


def _feasts(target: Any) -> bool:
    inner = getattr(target, "__func__", target)  # classmethod, staticmethod
    module = getattr(inner, "__module__", None) or ""
    return module == "feast" or module.startswith("feast.")


def _scoped(real: Callable[..., Any]) -> Callable[..., Any]:
    def typechecked(target: Any = None, **options: Any) -> Any:
        if target is None:  # @typechecked(...) with options
            return lambda decorated: typechecked(decorated, **options)
        return target if _feasts(target) else real(target, **options)

    typechecked.__doc__ = real.__doc__
    typechecked.__wrapped__ = real  # type: ignore[attr-defined]
    return typechecked


class _BeforeFeast(MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname == "feast":
            sys.meta_path.remove(self)
            import typeguard

            if not hasattr(typeguard.typechecked, "__wrapped__"):
                typeguard.typechecked = _scoped(typeguard.typechecked)
        return None  # the normal finders import it


def install() -> None:
    """Arrange for Feast to be imported without typeguard (once per process; a no-op
    when Feast is already imported, as its functions are decorated by then)."""
    if "feast" in sys.modules or any(isinstance(f, _BeforeFeast) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BeforeFeast())
