"""The alias a moved module leaves at its old path."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def test_old_path_is_the_new_module_and_warns_once(tmp_path):
    pkg = tmp_path / "movedpkg"
    (pkg / "new").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "new" / "__init__.py").write_text("")
    (pkg / "new" / "thing.py").write_text("class Thing:\n    pass\nVALUE = 7\n")
    (pkg / "old.py").write_text(
        "from emostyle_rt._moved import moved_module\nmoved_module(__name__, 'movedpkg.new.thing')\n")
    code = textwrap.dedent("""
        import warnings
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            import movedpkg.old as old
            from movedpkg.old import Thing, VALUE
            import movedpkg.old
        import movedpkg.new.thing as new
        assert old is new, (old, new)
        assert Thing is new.Thing and VALUE == 7
        import movedpkg
        assert movedpkg.old is new
        dep = [w for w in seen if issubclass(w.category, DeprecationWarning)]
        assert len(dep) == 1, [str(w.message) for w in seen]
        msg = str(dep[0].message)
        assert "movedpkg.old moved to movedpkg.new.thing" in msg, msg
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_emostyle_rt_engines_is_bundle_compiled_and_nothing_here_imports_it():
    """Issue 24: ``emostyle_rt.engines`` moved to ``emostyle_rt.bundle.compiled``; the old path is the same module
    (one warning), and no module of the runtime or the tools imports the old path any more."""
    code = textwrap.dedent("""
        import sys, warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            import emostyle_rt, emostyle_rt.manifest, emostyle_rt.stylizer, emostyle_rt.tiling
            import emostyle_rt.backends, emostyle_rt.backends.aoti, emostyle_rt.backends.tensorrt
            import emostyle_rt.backends.openvino
            import emostyle_export.bundle, emostyle_export.tensorrt_build, emostyle_export.cli
            import emostyle_bench.paths
        assert "emostyle_rt.engines" not in sys.modules, "a module still imports the old path"
        import emostyle_rt.bundle.compiled as new
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            from emostyle_rt import engines
            from emostyle_rt.engines import CLASSIFIER_KEY, TrtSidecar, find_engine
            import emostyle_rt.engines as again
        assert engines is new and again is new and emostyle_rt.engines is new
        assert CLASSIFIER_KEY == "classifier" and TrtSidecar is new.TrtSidecar and find_engine is new.find_engine
        import emostyle_rt.backends.tensorrt as trt
        assert trt.find_engine is new.find_engine  # a monkeypatch of the backend's name is still the backend's
        dep = [str(w.message) for w in seen if issubclass(w.category, DeprecationWarning)]
        assert len(dep) == 1 and "emostyle_rt.engines moved to emostyle_rt.bundle.compiled" in dep[0], dep
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "ok"


@pytest.mark.parametrize("old, new", [("emostyle_rt.videoio", "emostyle_rt.video.io"),
                                      ("emostyle_rt.coherence", "emostyle_rt.video.coherence"),
                                      ("emostyle_rt.lookahead", "emostyle_rt.video.lookahead")])
def test_video_modules_moved(old: str, new: str) -> None:
    """The three video modules of 0.1.0 are the video subpackage's modules under their old paths, with one warning."""
    code = textwrap.dedent(f"""
        import warnings
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            import {old} as old
        import {new} as new
        assert old is new, (old, new)
        dep = [w for w in seen if issubclass(w.category, DeprecationWarning) and "{old} moved to {new}" in str(w.message)]
        assert len(dep) == 1, [str(w.message) for w in seen]
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
