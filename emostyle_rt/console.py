"""Console entry points of the four commands, importable without importing anything heavy.

A command spends its first second importing (numpy, OpenCV and the runtime for
``emostyle``; argparse, logging and the tool's own modules for the others). A
Ctrl-C then must end the command like one later (exit status 130, one line, no
traceback), so each command's module is imported here, under that rule, rather
than by the script's own ``from ... import main`` line. Nothing here imports the
tools' packages (``emostyle_export``, ``emostyle_bench``, ``emostyle_train``)
until their command runs: the runtime never does.
"""

from __future__ import annotations

import importlib
import sys

#: The exit status of an interrupted command (128 + SIGINT), as every command's ``main`` returns it.
INTERRUPTED = 130


def run_command(module: str, interrupted: str) -> int:
    """``module.main()``, with the import of ``module`` under the Ctrl-C rule: ``interrupted`` (one line) on
    stderr and :data:`INTERRUPTED` for a Ctrl-C while it imports."""
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        sys.stderr.write(interrupted + "\n")
        return INTERRUPTED
    return main()


def emostyle() -> int:
    """The ``emostyle`` command: ``emostyle_rt.cli.main`` once imported; 130 for a Ctrl-C while importing."""
    return run_command("emostyle_rt.cli", "Interrupted.")


def emostyle_export() -> int:
    """The ``emostyle-export`` command (``emostyle_export.cli.main``)."""
    return run_command("emostyle_export.cli", "emostyle-export: interrupted; nothing was written")


def emostyle_bench() -> int:
    """The ``emostyle-bench`` command (``emostyle_bench.cli.main``)."""
    return run_command("emostyle_bench.cli", "emostyle-bench: interrupted; no result file was written")


def emostyle_train() -> int:
    """The ``emostyle-train`` command (``emostyle_train.cli.main``)."""
    return run_command("emostyle_train.cli", "emostyle-train: interrupted; nothing was written")


if __name__ == "__main__":
    sys.exit(emostyle())
