"""Backend selection details that need no bundle."""

from __future__ import annotations

import sys

import pytest

from emostyle_rt.backends.onnxruntime import import_onnxruntime
from emostyle_rt.errors import BackendError


def test_missing_onnxruntime_is_a_typed_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what a base install without [cpu]/[gpu] has
    with pytest.raises(BackendError, match=r"emostyle-rt\[cpu\]"):
        import_onnxruntime()
