"""``emostyle_rt.manifest``: the 0.1.0 import path of :mod:`emostyle_rt.bundle.manifest`.

Importing it gives that very module (one module object under two names, so
``emostyle_rt.manifest.X`` reads and ``monkeypatch.setattr`` writes the bundle
format's own names; no deprecation warning: the module path is public API). The
names that moved out (the crop grammar to :mod:`emostyle_export.crop`, the
command-line default bundle to :mod:`emostyle_rt.console`) are still reachable
here, imported when first asked for (:data:`emostyle_rt.bundle.manifest.MOVED`).
"""

from __future__ import annotations

import sys

from .bundle import manifest as _impl

sys.modules[__name__] = _impl
