"""HAProxy's runtime view, read from its stats socket: each server's state and counts.

``show stat`` answers one CSV row per frontend, backend and server; the columns used
here are ``pxname`` (the pool), ``svname`` (the server), ``status`` (``UP``, ``DOWN``,
``MAINT``, ``UP 1/2`` while rising...), ``stot`` (sessions sent to it in all) and
``wretr`` / ``wredis`` (retries and redispatches).

>>> rows = parse_stat("# pxname,svname,status,stot,\\nfraud,fraud-1,UP,12,\\nfraud,BACKEND,UP,12,\\n")
>>> [(r.pool, r.server, r.status, r.sessions) for r in rows]
[('fraud', 'fraud-1', 'UP', 12)]
"""

from __future__ import annotations

import csv
import io
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerStat", "parse_stat", "show_stat", "command"]


@dataclass(frozen=True)
class ServerStat:
    """One server of one pool, as HAProxy sees it now."""

    pool: str
    server: str
    status: str
    sessions: int
    retries: int
    redispatches: int


def command(socket_path: Path, line: str, timeout: float = 5.0) -> str:
    """Send one command to the stats socket; its whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(line.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):  # the socket closes after one answer
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


def parse_stat(text: str) -> list[ServerStat]:
    """The server rows of a ``show stat`` answer (frontends and backends left out)."""
    body = text.lstrip("# ")
    rows = csv.DictReader(io.StringIO(body))
    return [ServerStat(pool=r["pxname"], server=r["svname"], status=r.get("status") or "",
                       sessions=_int(r.get("stot")), retries=_int(r.get("wretr")),
                       redispatches=_int(r.get("wredis")))
            for r in rows if r.get("svname") not in ("FRONTEND", "BACKEND", None)]


def show_stat(socket_path: Path) -> dict[str, ServerStat]:
    """Every server, keyed by its name (``fraud-2``)."""
    return {s.server: s for s in parse_stat(command(socket_path, "show stat"))}
