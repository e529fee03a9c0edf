"""emostyle_ray: ``emostyle DIR -o OUT --ray`` and :func:`stylize_folder`, a folder or video job on Ray Data.

Installed with the ``ray`` extra. The runtime (``emostyle_rt``) never imports it; the command
imports it only for ``--ray``. Ray itself is imported inside the functions
that need it. See docs/ray.md.
"""

from __future__ import annotations

from .api import stylize_folder
from .job import FolderResult, Placement, placement

__all__ = ["FolderResult", "Placement", "placement", "stylize_folder"]
