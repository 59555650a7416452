"""Lifecycle: processes that never outlive their parent, servers that own their readiness.

Found by trying: a granian master killed with SIGKILL left its request workers serving
without a parent, and a server restarted on the same port was "ready" at once because
the leftovers answered ``/readyz``. Three pieces stop that:

- Every process ``mlsuite.serving`` starts (a server's master, a background worker)
  gets a parent-death signal before it runs anything (``die_with_parent`` in the
  child between fork and exec), and exits if its parent is already gone.
- The request workers a master forks lose that signal at fork, so each one sets its
  own when its app is created (``guard_server_worker``, from
  ``mlplatform.http.create_service_app``), and exits if its parent is no longer the
  master that started it. Linux delivers the signal only for a death *after* prctl,
  hence the check: the master carries the server's instance token in its environment.
- Each server gets a fresh random token (``MLSUITE_INSTANCE``); ``/readyz`` reports it
  and ``serving.wait_ready`` accepts only the server it just started.

``Backoff`` is the restart schedule of ``mlsuite serve``'s supervisor.

>>> b = Backoff(first=1, cap=4, reset_after=60)
>>> [b.failed(now=t) for t in (0, 1, 2, 3)]
[1.0, 2.0, 4.0, 4.0]
>>> b.failed(now=100)  # alive for a minute since the last start: start over
1.0
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import gc
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlplatform.errors import MLSuiteError

__all__ = ["INSTANCE_VAR", "PortInUse", "Backoff", "new_instance", "instance", "file_lock",
           "die_with_parent", "preexec_die_with_parent", "guard_server_worker",
           "settle_server_worker",
           "check_port_free", "port_listeners"]

log = logging.getLogger(__name__)

INSTANCE_VAR = "MLSUITE_INSTANCE"
_PR_SET_PDEATHSIG = 1


class PortInUse(MLSuiteError):
    """A server was asked to listen on a port something else already listens on."""


def _load_prctl() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc.prctl  # type: ignore[no-any-return]


# Resolved once in the parent: the child between fork and exec should do as little as
# possible (no library loading there).
_PRCTL = _load_prctl()


def local_secret(path: Path) -> bytes:
    """A random secret kept in ``path`` (mode 0600): created once by whichever process
    asks first, then read by every other (the embedded setup's signing and PII keys)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32).hex().encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_bytes()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while inside: processes on
    this machine, or on several sharing the folder, take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def new_instance() -> str:
    """A fresh token naming one server start."""
    return secrets.token_hex(8)


def instance() -> str:
    """This process's server instance token ("" when not started by ``serving.spawn``)."""
    return os.environ.get(INSTANCE_VAR, "")


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` when our parent exits; False where unsupported."""
    if _PRCTL is None:
        return False
    return bool(_PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)


def preexec_die_with_parent(parent: int) -> None:
    """``Popen(preexec_fn=...)`` body: die with ``parent``, or exit if it is already gone.

    Runs in the child after fork: the signal is kept across exec, so the server or
    worker it becomes dies with whoever started it (a SIGKILLed ``mlsuite serve``).
    """
    die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def guard_server_worker() -> None:
    """In a request worker of a server ``serving.spawn`` started: never outlive its master.

    A no-op in any other process (tests, the Flask dev server): only a process whose
    environment carries an instance token was started under a supervised master.
    """
    token = instance()
    if not token:
        return
    supported = die_with_parent()
    parent = os.getppid()
    if not _parent_carries(parent, token):
        log.error("server %s: the master that started this worker is gone (parent is now "
                  "pid %d); exiting", token, parent)
        os._exit(1)
    if not supported:
        log.warning("no parent-death signal on %s: request workers may outlive a killed "
                    "master", sys.platform)


def settle_server_worker() -> None:
    """In a request worker whose app is built: move what start-up made (the app, its
    models, clients and caches) out of the cycle collector's reach, after one last full
    collection (``gc.freeze``). A no-op in any other process.

    A full collection walks every tracked object: in a process with the fraud app built,
    some 340,000 of them, 208 ms during which a worker would answer nothing (a p99.9
    spike); CPython runs one whenever the objects that survived since the last reach a
    quarter of the long-lived ones. Frozen, they are no longer walked: the same collection took under 0.1 ms.
    Start-up objects are still freed when nothing refers to them; only cycles among them
    stay (a process lifetime's, once). Not in tests: a test process builds many apps, and
    their cycles must still be collected.
    """
    if not instance():
        return
    gc.collect()
    gc.freeze()
    log.debug("server worker %d: %d start-up objects frozen", os.getpid(), gc.get_freeze_count())


def _parent_carries(pid: int, token: str) -> bool:
    """Whether process ``pid`` was started with our instance token (Linux /proc).

    A worker orphaned before its prctl was reparented to init or a subreaper, which
    never carries the token. Without /proc, only a reparenting to init is detectable.
    """
    if pid <= 1:
        return False
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = fh.read().split(b"\0")
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")  # no /proc at all: trust the pid check
    except OSError:  # someone else's process (init, a root subreaper): not our master
        return False
    return f"{INSTANCE_VAR}={token}".encode() in environ


def port_listeners(port: int) -> list[str]:
    """Who listens on TCP ``port``: ``"pid 123 (granian)"`` where the OS tells us."""
    try:
        import psutil

        conns = psutil.net_connections(kind="tcp")
    except Exception:  # noqa: BLE001 - naming the holder is a courtesy, not a requirement
        return []
    out = []
    for conn in conns:
        if conn.status == "LISTEN" and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                out.append("a process of another user")
                continue
            try:
                name = " ".join(psutil.Process(conn.pid).cmdline()[:3])
            except psutil.Error:
                name = "?"
            out.append(f"pid {conn.pid} ({name})")
    return sorted(set(out))


def check_port_free(host: str, port: int) -> None:
    """Raise ``PortInUse`` naming the port (and the listening pids) if it is taken.

    Binding without SO_REUSEPORT fails even when the holder set it (granian does, which
    is how a second server once joined the first on one port). SO_REUSEADDR lets a
    port that only has connections in TIME_WAIT count as free.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                       socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    holders = port_listeners(port)
    by = f" by {', '.join(holders)}" if holders else ""
    raise PortInUse(f"port {port} on {host} is already in use{by}: stop that server "
                    f"or choose another port")


@dataclass
class Backoff:
    """Restart delays: ``first`` seconds, doubling to ``cap``; back to ``first`` once a
    start has stayed up ``reset_after`` seconds. Times are ``time.monotonic()`` values."""

    first: float = 1.0
    cap: float = 30.0
    reset_after: float = 60.0
    delay: float = 0.0
    started_at: float | None = None

    def failed(self, now: float) -> float:
        """The process died at ``now``: the seconds to wait before starting it again."""
        healthy = self.started_at is not None and now - self.started_at >= self.reset_after
        if self.delay == 0.0 or healthy:
            self.delay = self.first
        else:
            self.delay = min(self.cap, self.delay * 2)
        self.started_at = now  # a failed start counts from here too
        return self.delay

    def started(self, now: float) -> None:
        """A (re)start at ``now``."""
        self.started_at = now
