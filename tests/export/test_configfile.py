"""The tools' shared pieces: the config-file reader, the work-folder names, the authors' key map."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emostyle_export.checkpoints import AUTHORS_RENAMES, authors_to_ours, ours_to_authors
from emostyle_export.configfile import read_config_file
from emostyle_export.errors import ExportError
from emostyle_rt.fsutil import STAGE_NAME, make_work_folder, stage_name, work_match, work_name


class ToolError(Exception):
    pass


@pytest.mark.parametrize(("name", "data", "match"), [
    ("a.toml", b'x = "\xe9"', r"is not UTF-8 text \(byte 0xe9 at offset 5\)"),
    ("a.toml", b"x = ", r"a\.toml is not valid TOML"),
    ("a.json", b"{", r"a\.json is not valid JSON"),
])
def test_one_config_reader_for_both_tools(tmp_path: Path, name: str, data: bytes, match: str) -> None:
    (tmp_path / name).write_bytes(data)
    for error in (ExportError, ToolError):  # each tool raises its own error type
        with pytest.raises(error, match=match):
            read_config_file(tmp_path / name, error)


def test_config_reader_reads_toml_and_json(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[export]\nfp16 = true\n')
    (tmp_path / "a.JSON").write_text('{"export": {"fp16": true}}')
    assert read_config_file(tmp_path / "a.toml", ToolError) == read_config_file(tmp_path / "a.JSON", ToolError)
    with pytest.raises(ToolError, match="Cannot read config file"):
        read_config_file(tmp_path / "missing.toml", ToolError)


def test_work_names_match_their_own_rule_and_the_older_ones(tmp_path: Path) -> None:
    pid = os.getpid()
    built = work_name("bundle")
    m = work_match(built, "bundle")
    assert built.startswith(f".bundle.partial-{pid}-") and m and m["kind"] == "partial" and int(m["pid"]) == pid
    assert work_match(work_name("bundle", "old"), "bundle", kinds=("old",))
    assert not work_match(built, "other") and not work_match(built, "bundle", kinds=("old",))
    keras = work_name("emotion", suffix=".keras")
    assert work_match(keras, "emotion", suffix=".keras") and not work_match(keras, "emotion")
    # what earlier releases wrote: the start time as the token (bundles, aoti/), no token (classifiers)
    assert work_match(f".bundle.partial-{pid}-1733500000", "bundle")
    assert work_match(".emotion.partial-123.keras", "emotion", kinds=("partial",), suffix=".keras", token=False)
    assert not work_match(".emotion.partial-123.keras", "emotion", suffix=".keras")  # token required by default
    assert not work_match(".bundle.partial-0-1", "bundle") and not work_match("bundle.partial-1-1", "bundle")
    assert STAGE_NAME.match(stage_name())
    a, b = make_work_folder(tmp_path, "bundle"), make_work_folder(tmp_path, "bundle")
    assert a != b and a.is_dir() and work_match(a.name, "bundle")
    assert STAGE_NAME.match(make_work_folder(tmp_path / "new", parents=True).name)


def test_the_authors_key_map_both_ways() -> None:
    for theirs, ours in AUTHORS_RENAMES:
        assert authors_to_ours(theirs + "weight") == ours + "weight"
        assert ours_to_authors(ours + "bias") == theirs + "bias"
    assert authors_to_ours("res1.conv1.conv2d.weight") == ours_to_authors("res1.conv1.conv2d.weight") \
        == "res1.conv1.conv2d.weight"
