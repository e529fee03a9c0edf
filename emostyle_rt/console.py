"""Console entry points, importable without importing anything heavy.

``emostyle`` spends its first second importing numpy, OpenCV and the runtime.
A Ctrl-C then must end the command like one later (exit status 130, no
traceback), so the command's modules are imported here, under that rule,
rather than by the script's own ``from ... import main`` line.
"""

from __future__ import annotations

import sys

#: The exit status of an interrupted command (128 + SIGINT), as ``emostyle_rt.cli`` returns it.
INTERRUPTED = 130


def emostyle() -> int:
    """The ``emostyle`` command: ``emostyle_rt.cli.main`` once imported; 130 for a Ctrl-C while importing."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        return INTERRUPTED
    return main()


if __name__ == "__main__":
    sys.exit(emostyle())
