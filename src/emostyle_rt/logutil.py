"""Console logging for the command-line tools (library code only logs), and TensorFlow's noise."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Hashable, MutableMapping, Sequence

#: Environment that keeps TensorFlow quiet at import (no oneDNN banner, no INFO/WARNING lines from C++).
TF_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}


def quiet_tensorflow(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Silence TensorFlow's start-up noise in ``env`` (default ``os.environ``; before TensorFlow's first import).

    Values already set are kept. Returns ``env`` (e.g. a child process' environment).
    """
    env = os.environ if env is None else env
    for key, value in TF_QUIET_ENV.items():
        env.setdefault(key, value)
    return env


_ONCE_LOCK = threading.Lock()


def first_time(seen: set, key: Hashable) -> bool:
    """Whether ``key`` is new to ``seen`` (then added): the one check behind every "said once" message.

    Thread-safe (one lock for every such set: two threads never both see a key as new).

    Args:
        seen: The keys said so far (one set per kind of message, owned by the module that says it).
        key: What this message is about (a bundle, a path and reason, an input shape).
    """
    with _ONCE_LOCK:
        if key in seen:
            return False
        seen.add(key)
        return True


def warn_once(logger: logging.Logger, seen: set, key: Hashable, msg: str, *args: object) -> bool:
    """Log ``msg % args`` as a warning the first time ``key`` is seen in ``seen``; whether it was said.

    Args:
        logger: The logger that says it.
        seen: The keys said so far (see :func:`first_time`).
        key: What this message is about.
        msg: The message, %-style.
        *args: Its arguments.
    """
    if not first_time(seen, key):
        return False
    logger.warning(msg, *args)
    return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (works under capture too)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def setup_cli_logging(quiet: bool, *loggers: str, library: Sequence[str] = (), verbose: bool = False) -> None:
    """Send INFO (or only WARNING with ``quiet``) of the command's ``loggers`` to stderr, once.

    ``library`` loggers (e.g. ``emostyle_rt`` under the ``emostyle`` command) say only
    warnings and errors unless ``verbose``: their INFO lines (providers chosen,
    graphs loaded) are detail a command prints with ``-v``, which turns on DEBUG
    for every logger named here (over ``quiet``).
    """
    for name in (*loggers, *library):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not isinstance(h, _StderrHandler)]
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        quieter = quiet or (name in library and not verbose)
        logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quieter else logging.INFO)
        logger.propagate = False
