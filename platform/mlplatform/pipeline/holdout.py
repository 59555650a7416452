"""The fair held-out slice: the newest rows, after production's data cutoff.

Comparing a candidate with production is only fair on rows neither trained on. Rows
newer than production's data cutoff are new to production; the newest
``held_out_fraction`` of them is held out, and the candidate trains on everything before
that slice (the old data and the older part of the new). With nothing new since
production's cutoff there is no fair comparison: the split says so, and the gate refuses.

>>> import pandas as pd
>>> from datetime import UTC, datetime
>>> from mlplatform.pipeline.config import PipelineConfig
>>> ts = pd.Series(pd.to_datetime([1, 2, 3, 4, 5, 6], unit="D", utc=True))
>>> frame = pd.DataFrame({"timestamp": ts, "x": range(6)})
>>> s = time_holdout(frame, "timestamp", ts[1].to_pydatetime(),
...                  PipelineConfig(min_held_out_rows=1))
>>> s.train["x"].tolist(), s.held_out["x"].tolist()
([0, 1, 2, 3], [4, 5])
>>> print(time_holdout(frame, "timestamp", ts[5].to_pydatetime(), PipelineConfig()).reason)
no data newer than production's data cutoff 1970-01-07T00:00:00+00:00 (6 rows, none newer): nothing neither model trained on to compare them
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from mlplatform.pipeline.config import PipelineConfig
from mlplatform.pipeline.plugin import Split

__all__ = ["time_holdout"]


def time_holdout(frame: pd.DataFrame, column: str, production_cutoff: datetime | None,
                 config: PipelineConfig) -> Split:
    """Split ``frame`` (time in ``column``, UTC) at a cut inside the rows newer than
    ``production_cutoff``; ``reason`` explains when no fair slice exists."""
    frame = frame.sort_values(column, kind="stable").reset_index(drop=True)
    ts = frame[column]
    newest = _ceil_us(ts.max()) if len(frame) else None
    if production_cutoff is None:
        return Split(frame, frame.iloc[0:0], None, newest,
                     reason="production's data cutoff is unknown: no slice is known to be "
                            "unseen by it")
    new = frame[ts > pd.Timestamp(production_cutoff)]
    if new.empty:
        return Split(frame, frame.iloc[0:0], production_cutoff, newest, reason=(
            f"no data newer than production's data cutoff {production_cutoff.isoformat()} "
            f"({len(frame)} rows, none newer): nothing neither model trained on to compare them"))
    n_held = int(round(len(new) * config.held_out_fraction))
    if n_held < config.min_held_out_rows:
        return Split(frame, frame.iloc[0:0], production_cutoff, newest, reason=(
            f"only {len(new)} rows newer than production's data cutoff "
            f"{production_cutoff.isoformat()}: a held-out slice of {n_held} is under the "
            f"minimum of {config.min_held_out_rows} (MLSUITE_PIPELINE_MIN_HELD_OUT_ROWS)"))
    cut = new[column].iloc[len(new) - n_held]
    # Rows sharing the cut's timestamp all go to the slice: the candidate never sees a
    # moment it is scored on.
    train, held_out = frame[ts < cut], frame[ts >= cut]
    data_cutoff = _ceil_us(train[column].max()) if len(train) else None
    return Split(train.reset_index(drop=True), held_out.reset_index(drop=True),
                 production_cutoff, data_cutoff, info={
                     "new_rows": len(new),
                     "held_out_from": cut.isoformat(),
                     "held_out_until": held_out[column].max().isoformat()})


def _ceil_us(ts: pd.Timestamp) -> datetime:
    """``ts`` as a datetime, rounded up to the microsecond: every row it was computed
    from stays at or before it (a cutoff must not make its newest row look new)."""
    return pd.Timestamp(ts).ceil("us").to_pydatetime()
