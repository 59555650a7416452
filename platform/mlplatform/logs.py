"""Logging: one format for every mlsuite process, configured once.

Each line carries the time, level, logger and process id, so the lines of several
worker processes and replicas can be told apart and followed.
"""

from __future__ import annotations

import logging
import os

__all__ = ["configure_logging"]

FORMAT = "%(asctime)s %(levelname)-7s %(name)s [pid %(process)d] %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Send mlsuite's logs to stderr at ``level``; a no-op when logging is already set up."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=FORMAT)
    else:
        root.setLevel(level)
    # Libraries that narrate every call at INFO would drown the service's own lines.
    for noisy in ("feast", "urllib3", "werkzeug", "numexpr"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
