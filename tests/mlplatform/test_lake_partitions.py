"""The lake of a partitioned stream: on a cluster each partition key (``{p3}:fraud:decisions``)
is archived to its own folder (``p3.fraud.decisions``); every reader that asks for the
stream by its plain name gets all partitions as one table."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from mlplatform.lake import Lake
from mlplatform.pipeline.lineage import read_lake
from mlplatform.streams import partition_key

STREAM = "mlsuite:rec:events"
T0 = 1_700_000_000_000
DAY = 86_400_000


def _lake(tmp_path: Path) -> Lake:
    """Three partitions archived on two days, with one id that two masters both gave,
    one part file written twice (a crash before the cursor), and a folder of another
    stream whose name ends the same."""
    lake = Lake(tmp_path / "lake")
    for p in range(3):
        key = partition_key(STREAM, p, 3)
        lake.write(key, [(f"{T0 + p}-0", {"user_id": f"u{p}", "n": str(p)}),
                         (f"{T0 + DAY + p}-0", {"user_id": f"u{p}", "n": str(10 + p)})])
    lake.write(partition_key(STREAM, 1, 3), [(f"{T0 + DAY + 1}-0", {"user_id": "u1", "n": "11"})])
    lake.write(partition_key(STREAM, 2, 3), [(f"{T0 + 5}-0", {"user_id": "u2", "n": "5"})])
    lake.write(partition_key(STREAM, 0, 3), [(f"{T0 + 5}-0", {"user_id": "u0", "n": "50"})])
    lake.write("{p1}:other:mlsuite:rec:events", [(f"{T0}-0", {"n": "-1"})])
    return lake


def test_the_plain_name_reads_every_partition_as_one_table(tmp_path: Path) -> None:
    lake = _lake(tmp_path)
    frame = lake.read(STREAM)
    assert frame["n"].tolist() == ["0", "1", "2", "50", "5", "10", "11", "12"]
    assert lake.count(STREAM) == 8
    # A partition key reads its own folder only.
    assert lake.read(partition_key(STREAM, 1, 3))["n"].tolist() == ["1", "11"]
    since = datetime.fromtimestamp((T0 + DAY) / 1000, UTC)
    assert lake.read(STREAM, since=since, columns=["n"])["n"].tolist() == ["10", "11", "12"]
    assert lake.read(STREAM, since=datetime.fromtimestamp(T0 / 1000 + 3 * 86400, UTC)).empty


def test_lineage_find_and_partitions_cover_every_partition(tmp_path: Path) -> None:
    lake = _lake(tmp_path)
    frame, lineage = read_lake(lake, STREAM, columns=["user_id"])
    assert len(frame) == 8
    folders = {Path(e["path"]).parts[0] for e in lineage}
    assert folders == {"p0.mlsuite.rec.events", "p1.mlsuite.rec.events", "p2.mlsuite.rec.events"}
    assert [p.date for p in lake.partitions(STREAM)] == sorted(p.date for p in
                                                               lake.partitions(STREAM))
    found = lake.find(STREAM, "user_id", ["u0", "u2", "nobody"])
    assert {k: v["n"] for k, v in found.items()} == {"u0": "10", "u2": "12"}
