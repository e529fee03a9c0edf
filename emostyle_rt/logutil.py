"""Console logging for the command-line tools (library code only logs), and TensorFlow's noise."""

from __future__ import annotations

import logging
import os
import sys
from typing import MutableMapping, Sequence

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
