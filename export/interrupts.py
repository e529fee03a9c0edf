"""Ctrl-C in the command-line tools: one line on stderr and exit status 130, from the first instant.

A command's ``main`` catches ``KeyboardInterrupt`` once it runs; before that
(Python importing the command's modules: NumPy, OpenCV, emostyle_rt, about a
second) a Ctrl-C would print a traceback. :func:`install_early`, called at the
top of a command module before its heavy imports, makes that window exit at once
with one line; :func:`catch_from_here`, the first thing ``main`` does, hands
Ctrl-C back to Python (``KeyboardInterrupt``) for the command's own handling.
Standard library only: importing this module must itself be instant.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

#: Exit status of an interrupted command (128 + SIGINT, what shells report).
INTERRUPTED = 130


class _Early:
    """The SIGINT handler of the import window: says one line and exits (nothing has been written yet)."""

    def __init__(self, prog: str) -> None:
        self.prog = prog

    def __call__(self, signum: int, frame: Any) -> None:
        try:
            os.write(2, f"{self.prog}: interrupted\n".encode())
        finally:
            os._exit(INTERRUPTED)


def install_early(prog: str, module_name: str) -> None:
    """While the command ``prog`` imports, Ctrl-C exits with one line and 130.

    Only when this process runs the command (its console script, or
    ``python -m`` with ``module_name == "__main__"``), never when a test or a
    library imports the module, and only over Python's default handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if module_name != "__main__" and Path(sys.argv[0]).name != prog:
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _Early(prog))


def catch_from_here() -> None:
    """``main`` is ready: Ctrl-C raises ``KeyboardInterrupt`` again (where :func:`install_early` had set its handler)."""
    if threading.current_thread() is threading.main_thread() and isinstance(signal.getsignal(signal.SIGINT), _Early):
        signal.signal(signal.SIGINT, signal.default_int_handler)
