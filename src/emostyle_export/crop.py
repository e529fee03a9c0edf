"""The ``--classifier-crop`` grammar of ``emostyle-export`` (and ``emostyle-train``'s config files).

The runtime reads a bundle's crop as a :class:`~emostyle_rt.bundle.manifest.CropSpec`
(the manifest's ``classifier.crop`` block) and never parses text; choosing a
preset or writing ``key=value`` pairs is how an exporter says which crop its
classifier was trained on, so the grammar and its presets live here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from emostyle_rt.bundle.manifest import CV2_GREY, DEFAULT_CROP, CropSpec
from emostyle_rt.errors import InvalidArgumentError, note

#: ``emostyle-export --classifier-crop`` presets.
CROP_PRESETS: dict[str, CropSpec] = {
    "default": DEFAULT_CROP,
    # the fer package's own preprocessing (fer.py detect_emotions), exactly: square by integer growth, +10 px,
    # a 40 px frame of the bottom two rows' mean grey (cut beyond it), bilinear resize
    "fer-style": CropSpec(margin=10, margin_unit="px", border="bottom-rows-mean", border_width=40,
                          interpolation="linear", rounding="half-up"),
    "tight": CropSpec(margin=0.0, square="none"),
}
#: ``--classifier-crop`` keys -> CropSpec fields (margin also sets margin_unit).
CROP_KEYS = {"margin": "margin", "square": "square", "border": "border", "value": "border_value",
             "interp": "interpolation", "interpolation": "interpolation", "grey": "grey_weights",
             "alignment": "alignment", "rounding": "rounding", "border_width": "border_width"}


def parse_crop(spec: str | Mapping[str, Any] | CropSpec) -> CropSpec:
    """``--classifier-crop`` text (or a config-file table) -> a validated CropSpec.

    Text: a preset, or ``[preset,]key=value,...`` over it (preset "default" when
    none is named), e.g. ``fer-style`` or ``margin=10px,border=mean,interp=linear``.
    Keys: margin (0.2 of the box, or 10px), square, border, value (constant pad
    grey), interp, grey (R/G/B weights, or cv2), alignment, rounding (half-even,
    half-up), border_width (pixels, or none). A table takes the same
    keys and ``preset``.

    Args:
        spec: The text of ``--classifier-crop``, a config file's table, or a CropSpec (returned as is).

    Returns:
        The validated spec.

    Raises:
        InvalidArgumentError: An unknown preset or key, or a value out of range.
    """
    if isinstance(spec, CropSpec):
        return spec
    keys = ", ".join(CROP_KEYS)
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
        preset = items.pop(0) if items and "=" not in items[0] else "default"
        pairs = []
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                raise InvalidArgumentError(f"Crop spec item {item!r} is not key=value."
                                           + note(f"a preset first, then key=value with keys {keys}", item))
            pairs.append((key.strip(), value.strip()))
    elif isinstance(spec, Mapping):
        table = dict(spec)
        preset, pairs = table.pop("preset", "default"), list(table.items())
    else:
        raise InvalidArgumentError("A crop spec is a preset name, key=value text or a table."
                                   + note("str or table", type(spec).__name__))
    if not isinstance(preset, str) or preset not in CROP_PRESETS:
        raise InvalidArgumentError(
            f"Unknown crop preset {preset!r}." + note(f"one of {list(CROP_PRESETS)}, optionally followed by key=value "
                                                      f"pairs (keys {keys})", preset))
    changes: dict[str, Any] = {}
    for key, value in pairs:
        if key not in CROP_KEYS:
            raise InvalidArgumentError(f"Unknown crop spec key {key!r}."
                                       + note(f"one of {list(CROP_KEYS)} (or a preset first: {list(CROP_PRESETS)})", key))
        changes |= _crop_value(key, value)
    return replace(CROP_PRESETS[preset], **changes)


def _crop_value(key: str, value: Any) -> dict[str, Any]:
    """One ``key=value`` of a crop spec as CropSpec fields (strings converted; ranges checked by CropSpec)."""
    try:
        if key == "margin":
            if not isinstance(value, str):
                return {"margin": value, "margin_unit": "fraction"}
            text = value.strip().lower()
            unit = "px" if text.endswith("px") else "fraction"
            return {"margin": float(text.removesuffix("px")), "margin_unit": unit}
        if key == "value":
            return {"border_value": int(value) if isinstance(value, str) else value}
        if key == "border_width":
            if isinstance(value, str):
                text = value.strip().lower().removesuffix("px")
                value = None if text in ("none", "null", "") else int(text)
            return {"border_width": value}
        if key == "grey":
            if isinstance(value, str):
                value = CV2_GREY if value.strip().lower() in ("cv2", "bt601") else value.split("/")
            return {"grey_weights": tuple(float(w) for w in value)}
    except (TypeError, ValueError):
        expected = {"margin": "a fraction of the box such as 0.2, or pixels such as 10px",
                    "value": "an integer grey level 0..255", "grey": "R/G/B weights such as 0.299/0.587/0.114, or cv2",
                    "border_width": "whole pixels such as 40 (or 40px), or none"}
        raise InvalidArgumentError(
            f"Crop spec {key}={value!r} is not a valid value." + note(expected[key], repr(value))) from None
    return {CROP_KEYS[key]: value}


