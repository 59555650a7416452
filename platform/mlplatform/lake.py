"""The lake: every stream's history as date-partitioned parquet, the archive behind trimming.

Redis streams hold the recent past; the lake holds everything older. Before the worker
trims a stream it appends the entries to be trimmed here, under
``<data_dir>/lake/<stream>/date=YYYY-MM-DD/part-<first id>--<last id>.parquet`` (the stream
key with ``:`` written as ``.``; the date is the UTC day the entry was appended). The
stream plus the lake is the complete history: ``stream_id`` identifies an entry in both.

A part file is written to a temporary name, fsynced and renamed, so a reader never sees
half a file. A crash between writing a part and recording the archive cursor makes the
next run write those entries again under another name; ``read`` drops the duplicates by
``stream_id``, so the archive is at-least-once on disk and exactly-once to its readers.

Columns: ``stream_id`` ("<ms>-<seq>", str), ``stream_time`` (UTC timestamp of the id's
milliseconds), then one column per stream field, as text (the streams hold bytes;
typing them is the reader's job, e.g. the pipeline's ETL).

On a Redis Cluster a stream is partitioned (``mlplatform.streams``: ``{p3}:fraud:decisions``)
and each partition is archived to its own folder (``p3.fraud.decisions``). Reading a
stream by its plain name (``read``, ``partitions``, ``find``, ``count``) reads every
partition's folder with its own as one table, in id order; reading a partition key reads
that partition only. Ids are unique within a partition only (each is made by the
partition's master), so duplicates are dropped per folder.

>>> import tempfile
>>> lake = Lake(Path(tempfile.mkdtemp()))
>>> [p.name for p in lake.write("demo:events", [("1700000000000-0", {"a": "1"}),
...                                             ("1700000000001-0", {b"a": b"2"})])]
['part-1700000000000-0--1700000000001-0.parquet']
>>> lake.read("demo:events")[["stream_id", "a"]].values.tolist()
[['1700000000000-0', '1'], ['1700000000001-0', '2']]
>>> [(p.date, p.rows) for p in lake.partitions("demo:events")]
[('2023-11-14', 2)]
>>> _ = lake.write("{p1}:demo:events", [("1700000000000-5", {"a": "3"})])
>>> lake.read("demo:events")["a"].tolist(), lake.read("{p1}:demo:events")["a"].tolist()
(['1', '3', '2'], ['3'])
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from mlplatform.config import Settings

__all__ = ["Lake", "Partition", "stream_dir_name", "id_ms"]

Fields = Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str]


def stream_dir_name(stream: str) -> str:
    """The lake folder of a stream key: ``fraud:labels`` -> ``fraud.labels``.

    >>> stream_dir_name("mlsuite:rec:events")
    'mlsuite.rec.events'
    """
    return stream.replace(":", ".").replace("/", "_").replace("{", "").replace("}", "")


def id_ms(stream_id: str | bytes) -> int:
    """The milliseconds part of a stream id.

    >>> id_ms("1700000000123-4")
    1700000000123
    """
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    return int(text.partition("-")[0])


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Partition:
    """One part file of a stream's archive."""

    stream: str
    date: str  # YYYY-MM-DD (UTC) of the entries' append time
    path: Path
    rows: int


class Lake:
    """Date-partitioned parquet archives of streams under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        return cls(settings.lake_dir or Path(settings.data_dir) / "lake")

    def stream_dir(self, stream: str) -> Path:
        return self.root / stream_dir_name(stream)

    def stream_dirs(self, stream: str) -> list[Path]:
        """The folders holding ``stream``'s archive: its own, and for a plain stream name
        each partition's (``p<k>.<name>``, written on a cluster). A partition key (with a
        hash tag) has its own folder only."""
        own = self.stream_dir(stream)
        if "{" in stream or not self.root.is_dir():
            return [own]
        pattern = re.compile(r"p\d+\." + re.escape(own.name))
        parts = sorted((d for d in self.root.iterdir() if pattern.fullmatch(d.name)),
                       key=lambda d: int(d.name[1:d.name.index(".")]))
        return [own, *parts]

    # -- writing -----------------------------------------------------------------------

    def write(self, stream: str, entries: Sequence[tuple[str | bytes, Fields]]) -> list[Path]:
        """Append ``entries`` (id, fields) to the archive; one durable part file per day.

        Returns the files written (none for no entries).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not entries:
            return []
        by_day: dict[str, list[tuple[str, dict[str, str]]]] = {}
        for raw_id, fields in entries:
            sid = _text(raw_id)
            day = datetime.fromtimestamp(id_ms(sid) / 1000, UTC).strftime("%Y-%m-%d")
            row = {_text(k): _text(v) for k, v in fields.items()}
            by_day.setdefault(day, []).append((sid, row))
        written = []
        for day, rows in sorted(by_day.items()):
            names: dict[str, None] = {}
            for _, row in rows:
                names.update(dict.fromkeys(row))
            columns: dict[str, pa.Array] = {
                "stream_id": pa.array([sid for sid, _ in rows], pa.string()),
                "stream_time": pa.array([id_ms(sid) for sid, _ in rows], pa.int64()).cast(
                    pa.timestamp("ms", tz="UTC")),
            }
            for name in names:
                if name in columns:  # a field named like our columns keeps its value apart
                    continue
                columns[name] = pa.array([row.get(name) for _, row in rows], pa.string())
            table = pa.table(columns)
            folder = self.stream_dir(stream) / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"part-{rows[0][0]}--{rows[-1][0]}.parquet"
            tmp = folder / f".tmp-{uuid.uuid4().hex}.parquet"
            pq.write_table(table, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the trim that follows deletes the only other copy
            finally:
                os.close(fd)
            os.replace(tmp, target)
            _fsync_dir(folder)
            written.append(target)
        return written

    # -- reading -----------------------------------------------------------------------

    def partitions(self, stream: str) -> list[Partition]:
        """Every part file of ``stream`` (of each of its partitions), oldest day first
        (within a day, by first id)."""
        import pyarrow.parquet as pq

        out = []
        for base in self.stream_dirs(stream):
            if not base.is_dir():
                continue
            for day_dir in base.glob("date=*"):
                for path in day_dir.glob("part-*.parquet"):
                    out.append(Partition(stream, day_dir.name.removeprefix("date="), path,
                                         pq.ParquetFile(path).metadata.num_rows))
        return sorted(out, key=lambda p: (p.date, _first_id(p.path), str(p.path)))

    def read(self, stream: str, *, since: datetime | None = None, until: datetime | None = None,
             columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The archived entries of ``stream`` (optionally appended in [since, until)),
        de-duplicated by ``stream_id`` within each partition, in id order."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        wanted = None if columns is None else list(dict.fromkeys(
            ["stream_id", "stream_time", *columns]))
        frames = []
        by_folder: dict[Path, list[Path]] = {}
        for p in self.partitions(stream):
            if _day_in(p.date, since, until):
                by_folder.setdefault(p.path.parent.parent, []).append(p.path)
        for paths in by_folder.values():
            tables = []
            for path in paths:
                table = pq.read_table(path)
                if wanted is not None:
                    table = table.select([c for c in wanted if c in table.column_names])
                tables.append(table)
            # A crash between a part file and the archive cursor writes entries twice, in
            # the same folder: dropped here, before partitions (whose ids may meet) merge.
            frame = pa.concat_tables(tables, promote_options="default").to_pandas()
            frames.append(frame.drop_duplicates("stream_id"))
        if not frames:
            return pd.DataFrame({"stream_id": pd.Series(dtype=str),
                                 "stream_time": pd.Series(dtype="datetime64[ms, UTC]"),
                                 **{c: pd.Series(dtype=object) for c in (columns or [])}})
        frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        if since is not None:
            frame = frame[frame["stream_time"] >= pd.Timestamp(since)]
        if until is not None:
            frame = frame[frame["stream_time"] < pd.Timestamp(until)]
        if frame.empty:  # nothing in [since, until): no ids to split (no columns 0, 1)
            return frame.reset_index(drop=True)
        key = frame["stream_id"].str.split("-", n=1, expand=True).astype("int64")
        frame = frame.assign(_ms=key[0], _seq=key[1]).sort_values(["_ms", "_seq"],
                                                                  kind="stable")
        return frame.drop(columns=["_ms", "_seq"]).reset_index(drop=True)

    def find(self, stream: str, column: str, values: Sequence[str], *,
             since: datetime | None = None) -> dict[str, dict[str, str]]:
        """The newest archived entry whose ``column`` equals each of ``values`` (a lookup
        for what was trimmed from Redis, e.g. a decision a late label refers to).

        ``since`` skips the days before it: a lookup for something that cannot be older
        reads only the partitions that could hold it, not the whole archive.
        """
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        wanted = set(values)
        found: dict[str, dict[str, str]] = {}
        parts = [p for p in self.partitions(stream) if _day_in(p.date, since, None)]
        for part in reversed(parts):  # newest first
            if not wanted:
                break
            table = pq.read_table(part.path)
            if column not in table.column_names:
                continue
            hits = table.filter(pc.is_in(table[column], value_set=_pa_strings(wanted)))
            for row in reversed(hits.to_pylist()):
                key = row[column]
                if key in wanted:
                    found[key] = row
                    wanted.discard(key)
        return found

    def count(self, stream: str) -> int:
        """Archived entries of ``stream`` (duplicates from a crashed run counted once)."""
        return len(self.read(stream, columns=[]))


def _first_id(path: Path) -> tuple[int, int]:
    """The first stream id of a part file, from its name (``part-<first>--<last>``)."""
    first = path.name.removeprefix("part-").partition("--")[0]
    ms, _, seq = first.partition("-")
    return (int(ms), int(seq or 0)) if ms.isdigit() and seq.isdigit() else (0, 0)


def _pa_strings(values: set[str]) -> object:
    import pyarrow as pa

    return pa.array(sorted(values), pa.string())


def _day_in(day: str, since: datetime | None, until: datetime | None) -> bool:
    if since is not None and day < since.astimezone(UTC).strftime("%Y-%m-%d"):
        return False
    if until is not None and day > until.astimezone(UTC).strftime("%Y-%m-%d"):
        return False
    return True


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
