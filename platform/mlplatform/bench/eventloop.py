"""The event loop of one load generator process (``python -m mlplatform.bench.eventloop``).

One non-blocking loop (``selectors``: epoll on Linux) over raw HTTP/1.1 connections:
pre-encoded requests out, and of each answer only what it takes to know its status and
where it ends (Content-Length, chunked, or the connection's close). ``loadgen`` starts
these processes, hands each a ``Job`` and merges what they measured.

Protocol with the parent, over stdin/stdout: the parent writes the pickled job
(length-prefixed); the process connects what it needs, answers "ready", waits for
"go <time.monotonic() start>", writes "p <responses> <errors>" about ten times a second,
then "r <n>" and n bytes of the pickled result.
"""

from __future__ import annotations

import errno
import pickle
import selectors
import signal
import socket
import sys
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["UNIQUE", "Job", "parse_response", "run_loop"]

_NS = 1_000_000_000
UNIQUE = "<<unique-id-16>>"  # replaced per request by 6 hex (run) + 1 digit (process) + 9 digits
UNIQUE_BYTES = UNIQUE.encode()

_CONNECTING, _IDLE, _BUSY, _DOWN = range(4)


class _Conn:
    """One keep-alive connection and the response being read on it."""

    __slots__ = (
        "body_end",
        "buf",
        "chunked",
        "close_after",
        "head_end",
        "out",
        "retry_at",
        "sched",
        "sent",
        "sock",
        "state",
        "status",
    )

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.state = _DOWN
        self.buf = bytearray()
        self.sched = 0  # ns: when the request was due (open loop) or sent (closed loop)
        self.sent = 0
        self.head_end = -1
        self.body_end = -1
        self.status = 0
        self.chunked = False
        self.close_after = False
        self.out = b""  # unsent rest of a request (large bodies)
        self.retry_at = 0

    def reset_response(self) -> None:
        self.buf.clear()
        self.head_end = -1
        self.body_end = -1
        self.status = 0
        self.chunked = False
        self.close_after = False


def parse_response(conn: _Conn) -> bool:
    """Advance the parse of ``conn.buf``; True when one whole response is in."""
    buf = conn.buf
    if conn.head_end < 0:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        conn.head_end = end + 4
        head = bytes(buf[:end]).lower()
        conn.status = int(head[9:12])
        conn.close_after = b"\r\nconnection: close" in head or head.startswith(b"http/1.0")
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            conn.body_end = conn.head_end + int(head[at + 17:stop if stop >= 0 else None])
        elif b"\r\ntransfer-encoding: chunked" in head:
            conn.chunked = True
        elif conn.status in (204, 304) or 100 <= conn.status < 200:
            conn.body_end = conn.head_end
        else:  # body delimited by the end of the connection
            conn.close_after = True
            return False
    if conn.chunked:
        # One response in flight per connection, so a final empty chunk at the end of what
        # arrived ends it (no trailers: servers here send none).
        return buf.endswith(b"0\r\n\r\n") and (
            len(buf) - conn.head_end == 5 or buf.endswith(b"\r\n0\r\n\r\n"))
    return conn.body_end >= 0 and len(buf) >= conn.body_end


@dataclass(frozen=True)
class Job:
    """What one generator process does: its share of connections and of the rate."""

    host: str
    port: int
    requests: tuple[bytes, ...]
    connections: int
    rate: float | None  # this process's share
    warmup: float
    duration: float
    timeout: float
    offset: int  # where this process starts in the request pool
    slot: int  # this process's number (0-9), part of every unique token
    run_id: bytes  # 6 hex characters, the same for every process of one run


def run_loop(job: Job, ready: Callable[[], float],
             report: Callable[[int, int], None]) -> dict[str, Any]:
    """Connect, call ``ready()`` (it returns the common start as ``time.monotonic()``), run.

    Closed loop: every connection sends its next request as soon as the answer is in.
    Open loop: due requests go to an idle connection, else open a new one (up to
    ``job.connections``), else wait in line; no connection is opened before it has a
    request to send, because a server with synchronous workers (gunicorn sync) would sit
    on an idle connection while requests queue behind it.
    """
    sel = selectors.DefaultSelector()
    addr = (job.host, job.port)
    reqs = job.requests
    n_reqs = len(reqs)
    next_req = job.offset % n_reqs
    unique = any(UNIQUE_BYTES in r for r in reqs)
    token_prefix = job.run_id + str(job.slot % 10).encode()
    sent_count = 0
    open_loop = job.rate is not None
    conns = [_Conn() for _ in range(job.connections)]
    down: list[_Conn] = list(conns)  # no socket: free to (re)connect
    idle: list[_Conn] = []  # connected, nothing in flight (open loop)
    due: deque[int] = deque()  # scheduled send times waiting for a connection (open loop)
    errors: Counter[str] = Counter()
    lat = array("q")
    lag = array("q")  # per request: sent - scheduled (generator late, or no free connection)
    late = array("q")  # per request: when the loop saw it due - scheduled (generator only)
    ok = completed = responses = 0
    perf = time.perf_counter_ns
    t_rec = t_end = 0  # set at the start

    def counts(sched: int, now: int) -> bool:
        # Open loop: every request scheduled in the window, however late it ends.
        # Closed loop: every response that arrives in the window.
        return t_rec <= sched < t_end if open_loop else t_rec <= now < t_end

    def connect(c: _Conn, sched: int, now: int) -> None:
        """Open ``c`` to send a request due at ``sched`` once connected."""
        down.remove(c)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        err = s.connect_ex(addr)
        c.sock, c.state, c.out, c.sched = s, _CONNECTING, b"", sched
        c.reset_response()
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            drop(c, "connect", now)
            return
        sel.register(s, selectors.EVENT_WRITE, c)

    def drop(c: _Conn, kind: str | None, now: int) -> None:
        """Close ``c``; count ``kind`` as an error when a request was lost with it."""
        if c.sock is not None:
            try:
                sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
            c.sock = None
        if kind is not None and counts(c.sched, now):
            errors[kind] += 1
        if c.state == _IDLE:
            idle.remove(c)
        if c.state != _DOWN:
            down.append(c)
        # Back off after a failed connect: a server that is down is not hammered.
        c.state, c.retry_at = _DOWN, now + (10_000_000 if kind == "connect" else 0)

    def send(c: _Conn, sched: int, now: int) -> None:
        nonlocal next_req, sent_count
        data = reqs[next_req]
        next_req = next_req + 1 if next_req + 1 < n_reqs else 0
        if unique:
            sent_count += 1
            data = data.replace(UNIQUE_BYTES, b"%s%09d" % (token_prefix, sent_count))
        c.sched, c.sent, c.state = sched, now, _BUSY
        try:
            n = c.sock.send(data)  # type: ignore[union-attr]
        except OSError:
            drop(c, "reset", now)
            return
        if n < len(data):
            c.out = data[n:]
            sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)  # type: ignore[arg-type]

    def dispatch(now: int) -> None:
        """Open loop: hand due requests to idle connections, else to new ones."""
        while due:
            if idle:
                send(idle.pop(), due.popleft(), now)
                continue
            free = next((c for c in down if c.retry_at <= now), None)
            if free is None:
                return
            connect(free, due.popleft(), now)  # a failure counts against that request

    start_at = ready()  # every process starts at the same moment
    t_start = perf() + max(0, int(start_at * _NS) - time.monotonic_ns())
    t_rec = t_start + int(job.warmup * _NS)
    t_end = t_rec + int(job.duration * _NS)
    t_drain = t_end + int(min(job.timeout, 5.0) * _NS)
    timeout_ns = int(job.timeout * _NS)
    interval = int(_NS / job.rate) if job.rate else 0
    while perf() < t_start:
        time.sleep(min(0.01, max(0.0, (t_start - perf()) / _NS)))
    cpu0 = time.process_time()
    next_due = t_start
    next_check = t_start
    if not open_loop:
        for c in list(down):
            connect(c, t_start, t_start)

    while True:
        now = perf()
        if open_loop:
            if now >= t_end and not due and all(c.state != _BUSY and c.state != _CONNECTING
                                                 for c in conns):
                break
            if now >= t_drain:  # what is still queued or in flight has timed out
                for c in conns:
                    if c.state in (_BUSY, _CONNECTING):
                        drop(c, "timeout", now)
                errors["timeout"] += sum(1 for s in due if counts(s, now))
                break
            while next_due <= now and next_due < t_end:
                due.append(next_due)
                if next_due >= t_rec:
                    late.append(now - next_due)
                next_due += interval
            if due:
                dispatch(now)
        elif now >= t_end:
            break
        if now >= next_check:  # timeouts, reconnects and progress, ten times a second
            next_check = now + 100_000_000
            for c in conns:
                if c.state in (_BUSY, _CONNECTING) and now - c.sched > timeout_ns \
                        and now - c.sent > timeout_ns:
                    drop(c, "timeout", now)
            if not open_loop and now < t_end:
                for c in [c for c in down if c.retry_at <= now]:
                    connect(c, now, now)
            report(responses, sum(errors.values()))
        if open_loop and not due and next_due < t_end:
            wait = (next_due - now) / _NS
        else:
            wait = 0.1
        wait = min(wait, max(0.0, (next_check - now) / _NS))
        for key, events in sel.select(wait):
            c = key.data
            now = perf()
            if c.state == _CONNECTING:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[union-attr]
                if err:
                    drop(c, "connect", now)
                    continue
                sel.modify(c.sock, selectors.EVENT_READ, c)  # type: ignore[arg-type]
                send(c, c.sched, now)
                continue
            if events & selectors.EVENT_WRITE and c.out:
                try:
                    n = c.sock.send(c.out)  # type: ignore[union-attr]
                except OSError:
                    drop(c, "reset", now)
                    continue
                c.out = c.out[n:]
                if not c.out:
                    sel.modify(c.sock, selectors.EVENT_READ, c)  # type: ignore[arg-type]
            if not events & selectors.EVENT_READ:
                continue
            try:
                data = c.sock.recv(16384)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                drop(c, "reset" if c.state == _BUSY else None, now)
                continue
            if not data:  # the server closed the connection
                if c.state == _BUSY and c.close_after and c.head_end >= 0 and c.body_end < 0:
                    c.body_end = len(c.buf)  # a body delimited by the close: complete
                else:
                    drop(c, "closed" if c.state == _BUSY else None, now)
                    continue
            else:
                if c.state != _BUSY:
                    continue  # bytes nobody asked for: ignore
                c.buf += data
                if not parse_response(c):
                    continue
            sched, status = c.sched, c.status
            responses += 1
            if counts(sched, now):
                completed += 1
                lat.append(now - sched)
                if open_loop:
                    lag.append(c.sent - sched)
                if 200 <= status < 300:
                    ok += 1
                else:
                    errors[f"status {status}"] += 1
            if c.close_after or not data:
                drop(c, None, now)
                if not open_loop and now < t_end:
                    connect(c, now, now)
                continue
            c.reset_response()
            if open_loop:
                if due:
                    send(c, due.popleft(), now)
                else:
                    c.state = _IDLE
                    idle.append(c)
            elif now < t_end:
                send(c, now, now)
    cpu = time.process_time() - cpu0
    for c in conns:
        if c.sock is not None:
            c.sock.close()
    sel.close()
    report(responses, sum(errors.values()))
    return {"completed": completed, "ok": ok, "errors": dict(errors), "lat": lat.tobytes(),
            "lag": lag.tobytes(), "late": late.tobytes(), "cpu": cpu}


def _child_main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    size = int(stdin.readline())
    job: Job = pickle.loads(stdin.read(size))

    def ready() -> float:
        stdout.write(b"ready\n")
        stdout.flush()
        line = stdin.readline().split()
        if not line or line[0] != b"go":
            raise SystemExit(0)  # the parent gave up
        return float(line[1])

    def report(completed: int, errors: int) -> None:
        stdout.write(b"p %d %d\n" % (completed, errors))
        stdout.flush()

    blob = pickle.dumps(run_loop(job, ready, report))
    stdout.write(b"r %d\n" % len(blob) + blob)
    stdout.flush()


if __name__ == "__main__":
    _child_main()
