"""recommender: personalised, similar and batch recommendations, learning in real time.

A Flask service (``recommender.app:create_app``), its background worker
(``recommender.worker:build`` -> ``mlsuite worker recommender``) and its command line
(``recommender.cli:cli`` -> ``mlsuite recommender train|evaluate|bench``).

Modules, one concept each:

- ``data``: interactions in (CSV/Parquet), id maps both ways, event weights, time split
- ``models``: the ``Recommender`` interface every variant implements
- ``popularity``, ``factors``: the variants (factors: ALS and BPR, the implicit adapter)
- ``variants``: variants by name; ``ranking``: top n, excluding items
- ``evaluation``: precision/recall/ndcg/map@k and coverage, deterministic
- ``bundle``: one registered version (all variants, id maps, training histories)
- ``training``: fit a bundle, compare variants offline
- ``history``: live per-user history and the durable event stream in Redis
- ``catalogue``: item stock/category (the catalogue snapshot) and user segments
- ``trending``: live popularity and trending, decayed counts from the event stream
- ``updates``: item/user updates validated and queued; ``pusher``: batched Feast pushes
- ``pii``: user ids as tokens where they enter (requests, files, Feast's profile source)
- ``worker``: the background jobs (consumer groups, snapshots, retention)
- ``live``: what request workers follow: the worker's snapshots, swapped in
- ``engine``: serving logic (A/B variant, fold-in, filters, fallbacks), no HTTP
- ``views``, ``app``: the HTTP API; ``cli``, ``bench``: the commands
"""

from recommender.bundle import ModelBundle
from recommender.data import IdMap, load_interactions, time_split
from recommender.evaluation import ranking_metrics
from recommender.factors import ALSRecommender, BPRRecommender
from recommender.models import Recommender
from recommender.popularity import PopularityRecommender
from recommender.variants import make_recommender

__all__ = [
    "ALSRecommender",
    "BPRRecommender",
    "IdMap",
    "ModelBundle",
    "PopularityRecommender",
    "Recommender",
    "load_interactions",
    "make_recommender",
    "ranking_metrics",
    "time_split",
]
