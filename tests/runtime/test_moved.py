"""The alias a moved module leaves at its old path."""

from __future__ import annotations

import subprocess
import sys
import textwrap


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
