"""Logging: one format for every mlsuite process, configured once.

Each line carries the time, level, logger and process id, so the lines of several
worker processes and replicas can be told apart and followed.
"""

from __future__ import annotations

import logging
import os
import re

__all__ = ["configure_logging", "redact", "RedactSecrets"]

FORMAT = "%(asctime)s %(levelname)-7s %(name)s [pid %(process)d] %(message)s"


# What never belongs in a log line: an API key's secret part, a bearer token, a password
# in a URL's user info or query. Each keeps what tells the reader which one it was.
_SECRETS = (
    (re.compile(r"\b(mls_[0-9a-f]{8}_)[A-Za-z0-9_-]{8,}"), r"\1***"),
    (re.compile(r"(?i)\b(bearer\s+)(?!mls_)[^\s'\",]{8,}"), r"\1***"),
    (re.compile(r"(://[^/\s:@]*:)[^@\s/]+@"), r"\1***@"),
    (re.compile(r"(?i)\b(password=)[^&\s'\"]+"), r"\1***"),
)


def redact(text: str) -> str:
    """``text`` with secrets masked.

    >>> redact("key mls_1a2b3c4d_Zq9xYw8vUt7s6R5q4p3o2n1m revoked")
    'key mls_1a2b3c4d_*** revoked'
    >>> redact("redis://:s3cret@cache:6379/0 and Authorization: Bearer abcdefgh12345678")
    'redis://:***@cache:6379/0 and Authorization: Bearer ***'
    >>> redact("rediss://cache:6380/0?password=s3cret&ssl=1, nothing else")
    'rediss://cache:6380/0?password=***&ssl=1, nothing else'
    """
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Masks secrets in every record a handler writes (message and traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send mlsuite's logs to stderr at ``level``; a no-op when logging is already set up."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=FORMAT)
    else:
        root.setLevel(level)
    for handler in root.handlers:  # on handlers: records of every logger pass through them
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
    # Libraries that narrate every call at INFO would drown the service's own lines.
    for noisy in ("feast", "urllib3", "werkzeug", "numexpr"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
