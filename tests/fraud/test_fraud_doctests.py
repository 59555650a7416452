"""The runnable examples in the fraud modules' docstrings still hold."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["config", "schema", "velocity", "features", "models", "predictors", "thresholds",
           "drift", "bench", "business", "trees"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"fraud.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"fraud.{name} has no examples"
    assert result.failed == 0
