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
import logging
import os
import sys
from pathlib import Path

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


# ---------------------------------------------------------------- the bundle a command uses when none is given
# A front-end default, not the runtime's: Stylizer and load_manifest open only the folder they are given.

#: The bundle the command-line tools use when none is given: ``emostyle-export --demo`` writes it.
DEFAULT_BUNDLE = Path("bundles") / "demo"
#: Where 0.1.0 wrote the demo bundle (``scripts/demo.sh``): still found, with a warning, when DEFAULT_BUNDLE is absent.
LEGACY_BUNDLE = Path("engines") / "demo"
BUNDLE_ENV = "EMOSTYLE_BUNDLE"

log = logging.getLogger(__name__)
#: Old bundle folders already warned about: each is said once per process.
_WARNED: set[Path] = set()


def default_bundle(explicit: str | Path | None = None) -> Path:
    """The bundle a command uses: ``explicit`` (``--bundle``), else $EMOSTYLE_BUNDLE, else bundles/demo.

    bundles/demo is looked up in the working directory, then in the source tree
    of an editable install (so the repo's demo bundle works from any folder).
    In each, a bundle at the 0.1.0 location engines/demo is used where
    bundles/demo is absent, with one warning naming the new location.

    Args:
        explicit: The command's ``--bundle`` value, None when not given.

    Returns:
        The bundle folder (not checked: the command's own error says when it is missing, with :func:`bundle_hint`).
    """
    from .bundle.manifest import MANIFEST_NAME

    if explicit is not None:
        return Path(explicit)
    if os.environ.get(BUNDLE_ENV):
        return Path(os.environ[BUNDLE_ENV])
    checkout = Path(__file__).resolve().parents[2]  # a source checkout's root (src/emostyle_rt/console.py)
    if DEFAULT_BUNDLE.is_dir():
        return DEFAULT_BUNDLE
    if _old_bundle(LEGACY_BUNDLE, DEFAULT_BUNDLE, MANIFEST_NAME):
        return LEGACY_BUNDLE
    if (checkout / DEFAULT_BUNDLE / MANIFEST_NAME).is_file():
        return checkout / DEFAULT_BUNDLE
    if _old_bundle(checkout / LEGACY_BUNDLE, checkout / DEFAULT_BUNDLE, MANIFEST_NAME):
        return checkout / LEGACY_BUNDLE
    return DEFAULT_BUNDLE


def _old_bundle(old: Path, new: Path, manifest_name: str) -> bool:
    """Whether ``old`` (the 0.1.0 location) holds a bundle; the first time it does, a warning naming ``new``."""
    from .logutil import warn_once

    if not (old / manifest_name).is_file():
        return False
    warn_once(log, _WARNED, old, "Using the bundle at %s, the old default location; the default is now %s. "
              "Note: move the folder to %s, or make a new one with: emostyle-export --demo -o %s", old, new, new, new)
    return True


def bundle_hint() -> str:
    """How to choose or make a bundle: the tail of the error about a missing one."""
    return (f" Choose one with --bundle DIR or {BUNDLE_ENV}=DIR, or make the demo bundle (export extra) with:"
            f"  emostyle-export --demo -o {DEFAULT_BUNDLE}")
