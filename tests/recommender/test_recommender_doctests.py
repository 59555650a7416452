"""The runnable examples in the recommender modules' docstrings still hold."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["data", "engine", "evaluation", "history", "pii", "popularity", "ranking", "updates",
           "variants"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"recommender.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"recommender.{name} has no examples"
    assert result.failed == 0
