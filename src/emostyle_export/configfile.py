"""Reading a tool's config file (``emostyle-export --config``, ``emostyle-train all --config``).

One reader for both tools: TOML (or JSON by its ``.json`` suffix), UTF-8, with
typed errors that say which file and what is wrong. What the settings mean is
each tool's own business; this module only gets them off the disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emostyle_rt.errors import note, sentence


def config_kind(path: Path) -> str:
    """``"JSON"`` for a ``.json`` file, else ``"TOML"``."""
    return "JSON" if Path(path).suffix.lower() == ".json" else "TOML"


def read_config_file(path: str | Path, error: type[Exception]) -> Any:
    """The parsed content of a TOML or JSON config file (any top-level value: the caller checks it).

    Args:
        path: The file.
        error: The tool's error type, raised with the message (``ExportError``, ``TrainingError``).

    Raises:
        error: The file cannot be read, is not UTF-8 text or is not valid TOML / JSON.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"Cannot read config file {path}: " + sentence(exc)) from exc
    kind = config_kind(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"Config file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})."
            + note(f"a UTF-8 {kind} file", "other bytes")
        ) from None
    try:
        if kind == "JSON":
            return json.loads(text)
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package (the extras' marker)
            import tomli as tomllib
        return tomllib.loads(text)
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise error(f"Config file {path} is not valid {kind}: " + sentence(exc)) from exc
