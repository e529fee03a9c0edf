"""Style checkpoints of both common families, loaded into one ``TransformerNet``.

The family is detected from the file itself:

- ``authors``: the paper's training code saves a dict with ``state_dict`` plus
  metadata (``content_weight``, ``style_weight``, optimizer state...). Its
  upsampling layers are ``up1.conv2d.conv2d``, ``up2.conv2d.conv2d`` and
  ``up3.conv2d``. Convention ``imagenet``: RGB /255, ImageNet mean/std.
- ``pytorch-examples``: pytorch/examples ``fast_neural_style`` saves a flat
  state_dict with ``deconv1..3`` keys. Convention ``0-255``. Files from old
  PyTorch carry stale ``in*.running_mean/var`` keys, which are dropped.

Mixing up the two conventions gives wrong pictures without any error, so the
detected convention is recorded in the manifest and can be overridden.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from emostyle_rt.errors import note, sentence

from .errors import CheckpointError

log = logging.getLogger(__name__)

CONVENTIONS = ("imagenet", "0-255")
FAMILY_CONVENTION = {"authors": "imagenet", "pytorch-examples": "0-255"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The authors' state-dict key prefixes -> ours (pytorch/examples'): the one copy of that map, used both ways by
#: :func:`authors_to_ours` and :func:`ours_to_authors`.
AUTHORS_RENAMES = (
    ("up1.conv2d.conv2d.", "deconv1.conv2d."),
    ("up2.conv2d.conv2d.", "deconv2.conv2d."),
    ("up3.conv2d.", "deconv3.conv2d."),
)


def _renamed(key: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def authors_to_ours(key: str) -> str:
    """One state-dict key of the authors' layout (``up1.conv2d.conv2d.weight``) in ours (``deconv1.conv2d.weight``).

    Args:
        key: The key; others than the renamed prefixes are returned as they are.
    """
    return _renamed(key, AUTHORS_RENAMES)


def ours_to_authors(key: str) -> str:
    """One state-dict key of our layout in the authors' (the inverse of :func:`authors_to_ours`).

    Args:
        key: The key; others than the renamed prefixes are returned as they are.
    """
    return _renamed(key, tuple((new, old) for old, new in AUTHORS_RENAMES))
_STALE_NORM_KEY = re.compile(r"(^|\.)in\d+\.(running_mean|running_var|num_batches_tracked)$")


@dataclass(frozen=True)
class StyleCheckpoint:
    """A loaded style network and what was learned about its file."""

    model: Any  # TransformerNet in eval mode
    family: str  # "authors", "pytorch-examples" or "demo"
    convention: str  # "imagenet" or "0-255"
    convention_source: str  # "detected", "flag" or "demo"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    dropped_keys: tuple[str, ...] = ()


def _read(path: Path) -> Any:
    import pickle

    import torch

    if not path.is_file():
        raise CheckpointError(f"Style checkpoint {path} does not exist or is not a file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), None)
        if detail is None:
            raise CheckpointError(f"Style checkpoint {path} {unreadable(path, exc)}") from exc
        raise CheckpointError(
            f"Style checkpoint {path} holds pickled Python objects, which are not loaded for safety ({detail})."
            + note("a state_dict or a dict with 'state_dict' of tensors", "a pickled object")
        ) from exc
    except Exception as exc:  # torch raises RuntimeError/EOFError/KeyError/zipfile errors for damaged files
        raise CheckpointError(f"Style checkpoint {path} {unreadable(path, exc)}") from exc


def _looks(path: Path) -> str:
    """What a file that torch cannot read looks like: its size and how it starts."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        return f"a file that cannot be read ({sentence(exc.strerror or exc).rstrip('.')})"
    if size == 0:
        return "an empty file"
    kinds = {b"PK\x03\x04": "a zip archive that is not a torch.save file",
             b"\x80": "a Python pickle that is not a torch.save file", b"\x89HDF": "an HDF5 file (a Keras .h5?)",
             b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"<": "text (HTML or XML?)",
             b"{": "text (JSON?)"}
    kind = next((v for k, v in kinds.items() if head.startswith(k)), None)
    if kind is None:
        text = all(32 <= b < 127 or b in (9, 10, 13) for b in head)
        kind = "text" if text else "binary data"
    return f"{kind}, {size} bytes, starting {head[:8]!r}"


def unreadable(path: Path, exc: BaseException) -> str:
    """The tail of the message for a checkpoint ``torch.load`` cannot read: what was expected, what the file is."""
    return (f"cannot be read by torch.load ({type(exc).__name__}): it is not a PyTorch checkpoint, or it is damaged "
            "(truncated?)." + note("a file written by torch.save (a zip archive, or a legacy pickle)", _looks(Path(path))))


def detect_family(obj: Any, path: str | Path = "") -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Return (family, state_dict, metadata) for a checkpoint object loaded from ``path``."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"Style checkpoint {path or '(in memory)'} is not a dict of tensors."
            + note("a state_dict or {'state_dict': ...}", type(obj).__name__)
        )
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        meta = {k: v for k, v in obj.items() if k != "state_dict" and isinstance(v, (int, float, str, bool))}
        return "authors", dict(obj["state_dict"]), meta
    return "pytorch-examples", dict(obj), {}


def _normalise_keys(family: str, state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    out: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key.startswith("module."):  # saved from nn.DataParallel
            key = key[len("module."):]
        if _STALE_NORM_KEY.search(key):
            dropped.append(key)
            continue
        out[authors_to_ours(key) if family == "authors" else key] = value
    return out, dropped


def _short(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_style_checkpoint(path: str | Path, convention: str | None = None) -> StyleCheckpoint:
    """Load a style checkpoint of either family into ``TransformerNet``.

    ``convention`` (``"imagenet"`` or ``"0-255"``) overrides the one implied by
    the detected family.
    """
    from .models.transformer import TransformerNet

    path = Path(path)
    if convention is not None and convention not in CONVENTIONS:
        raise CheckpointError(f"Unknown style convention {convention!r}." + note(list(CONVENTIONS), convention))
    family, state, meta = detect_family(_read(path), path)
    state, dropped = _normalise_keys(family, state)

    model = TransformerNet()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"Style checkpoint {path} does not fit the style network (read as family {family!r}). "
            f"Missing keys: [{_short(missing)}]. Unexpected keys: [{_short(unexpected)}]."
            + note(
                "the pytorch/examples layout (conv1.conv2d.*, in1.*, res1..5.*, deconv1..3.*) or the authors' "
                "dict with 'state_dict' (up1/up2/up3 keys)",
                f"{len(state)} keys such as [{_short(sorted(state), 4)}]",
            )
        )
    bad_shapes = [
        f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if not hasattr(v, "shape") or tuple(v.shape) != tuple(expected[k].shape)
    ]
    if bad_shapes:
        raise CheckpointError(
            f"Style checkpoint {path} has tensors of the wrong shape: {_short(bad_shapes, 4)}."
            + note("the shapes of the 16-conv style network", "the shapes listed")
        )
    model.load_state_dict(state)
    model.eval()
    if dropped:
        log.info("%s: dropped %d stale InstanceNorm running-stat keys", path.name, len(dropped))
    chosen = convention or FAMILY_CONVENTION[family]
    if convention and convention != FAMILY_CONVENTION[family]:
        log.warning(
            "%s: convention %r forced by flag; the file looks like family %r (convention %r).",
            path.name, convention, family, FAMILY_CONVENTION[family],
        )
    return StyleCheckpoint(
        model=model,
        family=family,
        convention=chosen,
        convention_source="flag" if convention else "detected",
        metadata=meta,
        dropped_keys=tuple(dropped),
    )


def save_in_family(model: Any, path: str | Path, family: str, **metadata: Any) -> Path:
    """Save ``model`` in a family's on-disk layout (for tests and demos)."""
    import torch

    path = Path(path)
    state = model.state_dict()
    if family == "pytorch-examples":
        torch.save(state, path)
    elif family == "authors":
        torch.save({"state_dict": {ours_to_authors(k): v for k, v in state.items()}, **metadata}, path)
    else:
        raise CheckpointError(f"Unknown checkpoint family {family!r}." + note(list(FAMILY_CONVENTION), family))
    return path
