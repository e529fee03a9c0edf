"""Property tests: every array a caller can hand to ``Stylizer`` is handled or gets a typed error.

"Handled" means a same-size HxWx3 uint8 result that does not depend on the
array's memory layout and leaves the input untouched. Anything else must raise
an ``EmostyleError`` subclass: no other exception type, no crash, no hang.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as hs
from hypothesis.extra import numpy as hnp

from emostyle_rt import Stylizer
from emostyle_rt.errors import EmostyleError, InvalidArgumentError, InvalidImageError

MIN_SIDE = 5  # the demo bundle's style_input.min_side
SIDES = (0, 1, 2, 4, 5, 6, 7, 9, 13, 16)  # 0, 1, 4 fail; 5 is the smallest the network takes
DTYPES = (
    "uint8", "uint8", "uint8", "uint8", "uint8", "int8", "uint16", "int16", "int32", "uint32", "int64", "float16", "float32", "float64",
    "bool", "complex64", ">u2", "<f8",
)
LAYOUTS = ("c", "fortran", "step", "flip", "flip-channels", "readonly", "broadcast", "transpose")
MAX_SIDES: tuple[Any, ...] = (None, None, None, 5, 8, 6.0, 0, -3, True, np.int64(7))


@pytest.fixture(scope="module")
def st(demo_bundle: Path) -> Stylizer:
    return Stylizer(demo_bundle)


@pytest.fixture(scope="module")
def st_limited(demo_bundle: Path) -> Stylizer:
    """A Stylizer with a small pixel limit: "very large" inputs without the cost of running them."""
    return Stylizer(demo_bundle, max_pixels=48 * 48)


def _layout(a: np.ndarray, how: str) -> np.ndarray:
    """The same pixels (or a view of them) in another memory layout."""
    if a.ndim == 0:
        return a
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "step":  # non-contiguous view: every other column of a wider buffer
        wide = np.repeat(a, 2, axis=1) if a.ndim >= 2 else a
        return wide[:, ::2] if a.ndim >= 2 else wide
    if how == "flip":  # negative strides on both image axes
        return a[::-1, ::-1].copy()[::-1, ::-1] if a.ndim >= 2 else a[::-1].copy()[::-1]
    if how == "flip-channels" and a.ndim == 3:
        return a[:, :, ::-1].copy()[:, :, ::-1]
    if how == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if how == "broadcast" and a.ndim >= 1 and a.size and (a == a.flat[0]).all():
        return np.broadcast_to(a.flat[:1].reshape((1,) * a.ndim), a.shape)
    if how == "transpose" and a.ndim >= 2:
        axes = (1, 0) + tuple(range(2, a.ndim))
        return np.ascontiguousarray(a.transpose(axes)).transpose(axes)
    return a


def _expect_ok(a: np.ndarray) -> bool:
    """What the runtime promises to handle: uint8 HxW / HxWx{1,3,4}, both sides >= min_side."""
    if a.dtype != np.uint8 or a.ndim not in (2, 3):
        return False
    if a.ndim == 3 and a.shape[2] not in (1, 3, 4):
        return False
    return min(a.shape[:2]) >= MIN_SIDE


@hs.composite
def images(draw: hs.DrawFn, sides: tuple[int, ...] = SIDES) -> np.ndarray:
    rank = draw(hs.sampled_from((0, 1, 2, 3, 3, 3, 3, 4)))
    shape = [draw(hs.sampled_from(sides)) for _ in range(min(rank, 2))]
    if rank >= 3:
        shape.append(draw(hs.sampled_from((0, 1, 2, 3, 3, 4, 5))))
    if rank == 4:
        shape.insert(0, draw(hs.sampled_from((1, 2))))
    if rank == 1:
        shape = [draw(hs.sampled_from(sides))]
    dtype = np.dtype(draw(hs.sampled_from(DTYPES)))
    elements = None
    if dtype.kind == "f":  # NaN and inf are what bad float pipelines produce
        elements = hs.floats(allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8)
    return draw(hnp.arrays(dtype, tuple(shape), elements=elements))


def _check_one(st: Stylizer, raw: np.ndarray, layout: str, bgr: bool, emotion: str | None, max_side: Any) -> None:
    image = _layout(raw, layout)
    before = np.array(image, copy=True)
    note(f"shape={image.shape} dtype={image.dtype} strides={image.strides} layout={layout} "
         f"bgr={bgr} emotion={emotion} max_side={max_side!r}")
    side_ok = max_side is None or (
        not isinstance(max_side, bool) and isinstance(max_side, (int, np.integer)) and max_side >= MIN_SIDE
    )
    try:
        res = st.stylize(image, emotion=emotion, max_side=max_side, bgr=bgr)
    except EmostyleError as exc:
        assert not (_expect_ok(image) and side_ok), f"valid input refused: {exc!r}"
        assert isinstance(exc, (InvalidImageError, InvalidArgumentError)), repr(exc)
        assert "Note: expected" in str(exc) or "too small" in str(exc)
        event(f"typed error: {type(exc).__name__}")
        return
    assert _expect_ok(image) and side_ok, "invalid input accepted"
    event("handled")
    has_alpha = image.ndim == 3 and image.shape[2] == 4
    assert res.image.shape == (*image.shape[:2], 4 if has_alpha else 3) and res.image.dtype == np.uint8
    if has_alpha:  # the alpha plane passes through unchanged
        assert np.array_equal(res.image[..., 3], np.asarray(image)[..., 3])
    assert res.image.flags.c_contiguous
    assert np.array_equal(np.asarray(image), before), "the input was modified"
    if emotion is not None:
        assert res.emotion == emotion
    # The result does not depend on memory layout: same as for a fresh C-contiguous copy.
    again = st.stylize(np.ascontiguousarray(before), emotion=res.emotion, max_side=max_side, bgr=bgr)
    assert np.array_equal(res.image, again.image)


COMMON = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@settings(COMMON, max_examples=250)
@given(
    raw=images(),
    layout=hs.sampled_from(LAYOUTS),
    bgr=hs.booleans(),
    emotion=hs.sampled_from((None, "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")),
    max_side=hs.sampled_from(MAX_SIDES),
)
def test_stylize_handles_or_types_every_array(st: Stylizer, raw: np.ndarray, layout: str, bgr: bool,
                                              emotion: str | None, max_side: Any) -> None:
    _check_one(st, raw, layout, bgr, emotion, max_side)


@pytest.mark.slow
@settings(COMMON, max_examples=600)
@given(
    raw=images(sides=(0, 1, 4, 5, 6, 31, 64, 97, 130)),
    layout=hs.sampled_from(LAYOUTS),
    bgr=hs.booleans(),
    emotion=hs.sampled_from((None, "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")),
    max_side=hs.sampled_from(MAX_SIDES + (32, 64)),
)
def test_stylize_handles_or_types_every_array_heavy(st: Stylizer, raw: np.ndarray, layout: str, bgr: bool,
                                                    emotion: str | None, max_side: Any) -> None:
    _check_one(st, raw, layout, bgr, emotion, max_side)


@settings(COMMON, max_examples=60)
@given(
    h=hs.sampled_from((1, 2, 5, 49, 3000, 200_000)),
    w=hs.sampled_from((1, 3, 5, 48, 49, 4000)),
    channels=hs.sampled_from((None, 1, 3, 4)),
)
def test_very_large_and_very_thin_arrays_meet_the_pixel_limit(st_limited: Stylizer, h: int, w: int,
                                                              channels: int | None) -> None:
    """Over max_pixels: a typed error before any conversion or network run (arrays are views: no big buffers)."""
    shape = (h, w) if channels is None else (h, w, channels)
    image = np.broadcast_to(np.uint8(90), shape)  # zero-stride view: a 200000x4000 image costs no memory
    try:
        res = st_limited.stylize(image, emotion="sad", max_side=16)
    except InvalidImageError as exc:
        assert h * w > 48 * 48 or min(h, w) < MIN_SIDE, repr(exc)
        assert "Note: expected" in str(exc)
        return
    assert h * w <= 48 * 48 and min(h, w) >= MIN_SIDE
    assert res.image.shape == (h, w, 4 if channels == 4 else 3)  # alpha passes through


@pytest.mark.parametrize("side", [5, 6, 7, 9, 11])
@pytest.mark.parametrize("long", [257, 1031])
def test_thin_strips_keep_their_size(st: Stylizer, side: int, long: int) -> None:
    rng = np.random.default_rng(side * long)
    for shape in ((side, long, 3), (long, side, 3)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        res = st.stylize(image, emotion="fear")
        assert res.image.shape == shape and res.image.dtype == np.uint8


def test_very_large_array_with_max_side(st: Stylizer) -> None:
    """A 4000x3000 photo-sized array styles on a 64 px copy and comes back at full size."""
    image = np.zeros((3000, 4000, 3), np.uint8)
    image[:, ::7] = 200
    res = st.stylize(image, emotion="happy", max_side=64)
    assert res.image.shape == image.shape and res.image.dtype == np.uint8


@pytest.mark.parametrize(
    "value",
    [None, 3, 2.5, "not a path?", b"\x89PNG", [[1, 2, 3]], np.uint8(7), np.array(3, np.uint8),
     np.zeros((6, 6, 3), object), np.array([["a"] * 6] * 6), np.ma.masked_array(np.zeros((6, 6), np.float32))],
    ids=lambda v: type(v).__name__,
)
def test_non_images_get_typed_errors(st: Stylizer, value: Any) -> None:
    with pytest.raises(EmostyleError):
        st.stylize(value, emotion="happy")
    with pytest.raises(EmostyleError):
        st.classify(value)


@settings(COMMON, max_examples=80)
@given(raw=images(sides=(0, 1, 2, 4, 5, 8)), layout=hs.sampled_from(LAYOUTS), bgr=hs.booleans())
def test_classify_handles_or_types_every_array(st: Stylizer, raw: np.ndarray, layout: str, bgr: bool) -> None:
    image = _layout(raw, layout)
    try:
        c = st.classify(image, bgr=bgr)
    except EmostyleError as exc:
        assert isinstance(exc, InvalidImageError), repr(exc)
        ok = image.dtype == np.uint8 and (image.ndim == 2 or image.ndim == 3 and image.shape[2] in (1, 3, 4))
        if ok:  # a valid dtype and shape: only an empty or too-small image may be refused
            assert min(image.shape[:2]) < MIN_SIDE, repr(exc)
        return
    assert image.dtype == np.uint8 and image.ndim in (2, 3) and min(image.shape[:2]) >= 1
    assert list(c.scores) == list(st.labels) and c.emotion in st.labels
    assert all(np.isfinite(v) for v in c.scores.values())


@hs.composite
def valid_images(draw: hs.DrawFn, sides: tuple[int, ...] = (5, 6, 7, 8, 9, 12, 17, 23)) -> np.ndarray:
    h, w = draw(hs.sampled_from(sides)), draw(hs.sampled_from(sides))
    channels = draw(hs.sampled_from((None, 1, 3, 4)))
    shape = (h, w) if channels is None else (h, w, channels)
    return draw(hnp.arrays(np.uint8, shape))


@settings(COMMON, max_examples=60)
@given(
    raw=valid_images(),
    layout=hs.sampled_from(LAYOUTS),
    bgr=hs.booleans(),
    emotion=hs.sampled_from((None, "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")),
    max_side=hs.sampled_from((None, None, 5, 8, np.int64(6))),
)
def test_valid_arrays_are_handled_in_every_layout(st: Stylizer, raw: np.ndarray, layout: str, bgr: bool,
                                                  emotion: str | None, max_side: Any) -> None:
    assert _expect_ok(raw)
    _check_one(st, raw, layout, bgr, emotion, max_side)


@pytest.mark.slow
@settings(COMMON, max_examples=400)
@given(
    raw=valid_images(sides=(5, 6, 7, 33, 64, 101, 150)),
    layout=hs.sampled_from(LAYOUTS),
    bgr=hs.booleans(),
    emotion=hs.sampled_from((None, "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")),
    max_side=hs.sampled_from((None, None, 5, 40, 64)),
)
def test_valid_arrays_are_handled_in_every_layout_heavy(st: Stylizer, raw: np.ndarray, layout: str, bgr: bool,
                                                        emotion: str | None, max_side: Any) -> None:
    _check_one(st, raw, layout, bgr, emotion, max_side)
