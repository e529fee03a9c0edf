"""Issue 24's moves: each old module path still imports, warns once (DeprecationWarning) and is the new module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: old path -> new path, and a name each defines (the same object must come from both).
MOVED = {
    "emostyle_rt.faces": ("emostyle_rt.detection.faces", "crop_face"),
    "emostyle_rt.mtcnn": ("emostyle_rt.detection.mtcnn", "MtcnnDetector"),
    "emostyle_rt.imageio": ("emostyle_rt.imaging.io", "read_image"),
    "emostyle_rt.formats": ("emostyle_rt.imaging.formats", "FORMATS"),
    "emostyle_rt.metadata": ("emostyle_rt.imaging.metadata", "read_meta"),
    "emostyle_rt.backends.onnxruntime": ("emostyle_rt.backends.ort", "OrtRunner"),
}

CODE = """
import importlib, json, sys, warnings
old, new, name = sys.argv[1:4]
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    old_mod = importlib.import_module(old)
    value = getattr(importlib.import_module(old), name)
new_mod = importlib.import_module(new)
parent, _, leaf = old.rpartition(".")
print(json.dumps({
    "same_module": old_mod is new_mod,
    "same_object": value is getattr(new_mod, name),
    "parent_attr": getattr(sys.modules[parent], leaf) is new_mod,
    "warnings": [str(w.message) for w in seen if issubclass(w.category, DeprecationWarning)],
}))
"""


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_warns_and_is_the_new_module(old: str) -> None:
    new, name = MOVED[old]
    done = subprocess.run([sys.executable, "-c", CODE, old, new, name], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["same_module"] and found["same_object"] and found["parent_attr"], found
    assert found["warnings"] == [
        f"{old} moved to {new}; the old path is deprecated and will be removed. Note: import {new} instead."]


def test_new_paths_import_without_deprecation_warnings() -> None:
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            + "".join(f"import {new}\n" for new, _ in MOVED.values())
            + "import emostyle_rt.detection as d, emostyle_rt.imaging as i\n"
            + "[getattr(m, n) for m in (d, i) for n in m.__all__]\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
