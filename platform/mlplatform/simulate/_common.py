"""Plumbing shared by the simulators: seeded streams, ids, time, and sorted parquet output.

Frames travel between the pieces as plain ``dict[str, np.ndarray]`` ("columns"):
timestamps as int64 microseconds since the epoch (UTC), strings as object arrays.
Only the writer turns them into Arrow, so the same code path handles 10 rows or
100 million.
"""

from __future__ import annotations

import os
import sys
import zipfile
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

Columns = dict[str, np.ndarray]

US_PER_SECOND = 1_000_000
US_PER_HOUR = 3_600 * US_PER_SECOND
US_PER_DAY = 24 * US_PER_HOUR
# A fixed default start keeps the data byte-identical from run to run.
DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)

# Share of daily activity per hour of day: quiet nights, a lunch bump, an evening peak.
_HOURLY = np.array(
    [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 4, 4.5, 5, 6, 5.5, 5, 5, 5.5, 6.5, 7.5, 8, 7.5, 6, 4, 2]
)
_HOURLY_CDF = np.cumsum(_HOURLY) / _HOURLY.sum()
# Monday .. Sunday: weekends are a little busier.
_WEEKDAY = np.array([0.95, 0.95, 0.97, 1.0, 1.05, 1.1, 1.0])


def check_sizes(**sizes: int) -> None:
    """Raise ValueError naming the first size below 1.

    >>> check_sizes(n_users=3, n_days=1)
    >>> check_sizes(n_users=0)
    Traceback (most recent call last):
    ...
    ValueError: n_users must be an integer >= 1, got 0
    """
    for name, value in sizes.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def generators(seed: int, n: int, domain: str) -> list[np.random.Generator]:
    """Independent PCG64 streams for the parts of one simulation, all fixed by ``seed``.

    Separate streams mean changing how one part draws does not shift the others; the
    ``domain`` keeps the shop's streams apart from the payments' for the same seed.

    >>> a, _ = generators(7, 2, "shop")
    >>> b, _ = generators(7, 2, "shop")
    >>> c, _ = generators(7, 2, "payments")
    >>> int(a.integers(1 << 30)) == int(b.integers(1 << 30)) != int(c.integers(1 << 30))
    True
    """
    root = np.random.SeedSequence([seed, zlib.crc32(domain.encode())])
    return [np.random.Generator(np.random.PCG64(s)) for s in root.spawn(n)]


def id_width(default: int, n: int) -> int:
    """Digits for ids numbered 1..n: the schema's width, wider only if n needs it.

    >>> id_width(6, 5_000), id_width(5, 1_234_567)
    (6, 7)
    """
    return max(default, len(str(n)))


def format_ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded string ids as an object array (vectorised in Arrow).

    >>> format_ids("u", np.array([1, 42]), 6).tolist()
    ['u000001', 'u000042']
    """
    digits = pc.utf8_lpad(pc.cast(pa.array(np.asarray(numbers, dtype=np.int64)), pa.string()),
                          width=width, padding="0")
    joined = pc.binary_join_element_wise(prefix, digits, "")
    return np.asarray(joined.to_numpy(zero_copy_only=False), dtype=object)


def entity_ids(prefix: str, n: int, width: int) -> np.ndarray:
    """Ids ``prefix000001 .. prefix<n>`` for an entity table."""
    return format_ids(prefix, np.arange(1, n + 1), id_width(width, n))


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime.

    >>> to_us(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC))
    1000000
    """
    if moment.tzinfo is None:
        raise ValueError(f"start must be timezone-aware, got naive {moment.isoformat()}")
    return round(moment.timestamp() * US_PER_SECOND)


def iso(us: int) -> str:
    """ISO-8601 text of a microsecond timestamp, for summaries.

    >>> iso(0)
    '1970-01-01T00:00:00+00:00'
    """
    return datetime.fromtimestamp(us / US_PER_SECOND, tz=UTC).isoformat()


def weekday_factor(day_start_us: int) -> float:
    """Relative activity of the day starting at ``day_start_us`` (1970-01-01 was a Thursday)."""
    return float(_WEEKDAY[(day_start_us // US_PER_DAY + 3) % 7])


def time_of_day(rng: np.random.Generator, n: int) -> np.ndarray:
    """Microsecond offsets within a day following the daily activity curve."""
    hour = np.searchsorted(_HOURLY_CDF, rng.random(n), side="right")
    return (hour * US_PER_HOUR + rng.integers(0, US_PER_HOUR, n)).astype(np.int64)


def episode_starts(
    rng: np.random.Generator, n: int, t0: int, t1: int, uniform_share: float = 0.0
) -> np.ndarray:
    """``n`` start times in [t0, t1): a day at random, the time of day by the daily
    activity curve, except ``uniform_share`` of them at any hour (night owls, fraud rings
    in other time zones)."""
    t1 = max(t0 + 1, t1)
    start = rng.integers(t0, t1, n)
    day = t0 + (start - t0) // US_PER_DAY * US_PER_DAY
    curve = rng.random(n) >= uniform_share
    return np.clip(np.where(curve, day + time_of_day(rng, n), start), t0, t1 - 1)


def burst_times(
    rng: np.random.Generator, size: np.ndarray, t0: int, t1: int,
    mean_gap: float | np.ndarray, gap_range: tuple[float, float], uniform_share: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Episode number and timestamp of every row of ``len(size)`` bursts starting in
    [t0, t1): row k of a burst comes an exponential gap (mean ``mean_gap``, per burst or
    one for all, clipped to ``gap_range``) after row k - 1. Rows may run past ``t1``.

    >>> ep, ts = burst_times(np.random.default_rng(0), np.array([2, 3]), 0, US_PER_DAY,
    ...                      60.0 * US_PER_SECOND, (US_PER_SECOND, 600 * US_PER_SECOND))
    >>> ep.tolist(), bool(np.all(np.diff(ts)[[0, 2, 3]] >= US_PER_SECOND))
    ([0, 0, 1, 1, 1], True)
    """
    size = np.asarray(size, np.int64)
    n = len(size)
    ep = np.repeat(np.arange(n), size)
    mean = np.broadcast_to(np.asarray(mean_gap, np.float64), (n,))
    gaps = np.clip(rng.exponential(1.0, len(ep)) * mean[ep], *gap_range).astype(np.int64)
    first = np.cumsum(size) - size
    gaps[first[size > 0]] = 0
    elapsed = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[np.minimum(first, len(ep) - 1)]
                                          if len(ep) else np.zeros(n, np.int64), size)
    start = episode_starts(rng, n, t0, t1, uniform_share)
    return ep, start[ep] + elapsed


def segmented_pick(
    flat_cdf: np.ndarray, segment: np.ndarray, width: int, u: np.ndarray
) -> np.ndarray:
    """One index per row from that row's own distribution in a flattened CDF table.

    ``flat_cdf`` holds segment k's cumulative probabilities shifted into (k, k+1], each
    segment ``width`` long, so one ``searchsorted`` serves every row; ``u`` are the
    rows' uniform draws in [0, 1).

    >>> cdf = np.array([0.5, 1.0, 2.0, 2.0])  # segment 0: 50/50, segment 1: always item 0
    >>> segmented_pick(cdf, np.array([0, 0, 1]), 2, np.array([0.2, 0.7, 0.9])).tolist()
    [0, 1, 0]
    """
    pos = np.searchsorted(flat_cdf, segment + u, side="right")
    return np.minimum(pos - segment * width, width - 1)


def segmented_sample(
    rng: np.random.Generator, flat_cdf: np.ndarray, segment: np.ndarray, width: int
) -> np.ndarray:
    """``segmented_pick`` with fresh uniform draws from ``rng``."""
    return segmented_pick(flat_cdf, segment, width, rng.random(len(segment)))


def masked(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` where ``mask`` holds, else None (a nullable string column).

    >>> masked(np.array([True, False]), np.array(["a", "b"], dtype=object)).tolist()
    ['a', None]
    """
    out = np.full(len(mask), None, dtype=object)
    out[mask] = values[mask]
    return out


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "day") -> tqdm:
    """The one progress bar style of the simulators (stderr, off when not wanted)."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled)


def to_table(columns: Mapping[str, np.ndarray], schema: pa.Schema) -> pa.Table:
    """Arrow table in exactly ``schema``; int64 microseconds become UTC timestamps."""
    return pa.Table.from_arrays(
        [pa.array(columns[f.name], type=f.type) for f in schema], schema=schema
    )


def write_table(columns: Mapping[str, np.ndarray], schema: pa.Schema, path: Path) -> int:
    """Write a small table atomically (temp file, then rename); returns the row count."""
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(to_table(columns, schema), tmp)
    os.replace(tmp, path)
    return len(next(iter(columns.values())))


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` with fixed zip timestamps, so the file is byte-identical per seed."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(value), allow_pickle=False)
    os.replace(tmp, path)


class SortedParquetWriter:
    """Writes a large table sorted by its time column, one chunk at a time.

    ``add(columns, flush_before=t)`` promises that no later chunk has rows earlier than
    ``t``: rows before ``t`` are sorted and written, the rest wait for the next chunk.
    An optional id column is numbered 1.. in written (time) order. The file appears
    under its final name only when ``close`` (or leaving a ``with`` block) succeeds.
    """

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        time_column: str,
        id_column: tuple[str, str, int] | None = None,
    ) -> None:
        self.path = path
        self.schema = schema
        self.time_column = time_column
        self.id_column = id_column  # (name, prefix, width)
        self.rows = 0
        self._tmp = path.with_name(path.name + ".tmp")
        self._writer = pq.ParquetWriter(self._tmp, schema)
        self._pending: Columns | None = None
        self._closed = False

    def add(self, columns: Mapping[str, np.ndarray], *, flush_before: int | None) -> None:
        """Queue rows; write every queued row earlier than ``flush_before`` (all if None)."""
        if self._pending is not None:
            columns = {k: np.concatenate([self._pending[k], v]) for k, v in columns.items()}
        order = np.argsort(columns[self.time_column], kind="stable")
        ordered = {k: v[order] for k, v in columns.items()}
        cut = len(order) if flush_before is None else int(
            np.searchsorted(ordered[self.time_column], flush_before, side="left")
        )
        self._pending = {k: v[cut:] for k, v in ordered.items()}
        if cut:
            self._write({k: v[:cut] for k, v in ordered.items()})

    def _write(self, columns: Columns) -> None:
        n = len(columns[self.time_column])
        if self.id_column is not None:
            name, prefix, width = self.id_column
            columns[name] = format_ids(prefix, np.arange(self.rows + 1, self.rows + n + 1), width)
        self._writer.write_table(to_table(columns, self.schema))
        self.rows += n

    def close(self) -> int:
        """Write what is left, publish the file, and return the number of rows."""
        if self._closed:
            return self.rows
        self._closed = True
        if self._pending is not None and len(self._pending[self.time_column]):
            self._write(self._pending)
        self._pending = None
        self._writer.close()
        os.replace(self._tmp, self.path)
        return self.rows

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:
            self._closed = True
            self._writer.close()
            self._tmp.unlink(missing_ok=True)
