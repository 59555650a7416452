"""The variants by name: make one, load one from its folder.

>>> sorted(VARIANTS)
['als', 'bpr', 'popularity']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from recommender.factors import ALSRecommender, BPRRecommender
from recommender.models import ARRAYS_FILE, PARAMS_FILE, Recommender
from recommender.popularity import PopularityRecommender

__all__ = ["VARIANTS", "load_recommender", "make_recommender"]

VARIANTS: dict[str, type[Recommender]] = {
    "als": ALSRecommender,
    "bpr": BPRRecommender,
    "popularity": PopularityRecommender,
}


def make_recommender(kind: str, **params: Any) -> Recommender:
    """A new, unfitted variant by name ("als", "bpr", "popularity")."""
    try:
        cls = VARIANTS[kind]
    except KeyError:
        raise ValueError(f"model must be one of {', '.join(VARIANTS)}, got {kind!r}") from None
    return cls(**params)


def load_recommender(folder: Path) -> Recommender:
    """A variant saved by ``Recommender.save`` (no pickle: arrays and JSON only)."""
    params = json.loads((folder / PARAMS_FILE).read_text())
    model = make_recommender(params.pop("kind"), **params)
    with np.load(folder / ARRAYS_FILE, allow_pickle=False) as arrays:
        model.restore({k: arrays[k] for k in arrays.files})
    return model
