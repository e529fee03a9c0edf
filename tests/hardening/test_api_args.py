"""The Stylizer's arguments and hooks under misuse: typed errors that say what was wrong, and pickling."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skimage import data

from emostyle_rt import Face, Stylizer
from emostyle_rt.errors import BackendError, ImageReadError, InvalidArgumentError

ASTRONAUT = np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="module")
def st(demo_bundle: Path) -> Stylizer:
    return Stylizer(demo_bundle)


@pytest.mark.parametrize("margin", [-0.5, "0.2", True, float("nan"), 50.0])
def test_bad_margin_is_refused(demo_bundle: Path, margin: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"margin must be.*Note: expected 0 <= margin"):
        Stylizer(demo_bundle, margin=margin)


@pytest.mark.parametrize("margin", [0, 0.0, 0.2, 1])
def test_good_margin_is_kept(demo_bundle: Path, margin: float) -> None:
    assert Stylizer(demo_bundle, margin=margin).margin == float(margin)


def test_no_margin_means_the_bundles_crop_spec(demo_bundle: Path) -> None:
    st = Stylizer(demo_bundle)
    assert st.margin is None and st.crop == st.manifest.classifier.crop
    assert Stylizer(demo_bundle, margin=0.5).crop.margin == 0.5


@pytest.mark.parametrize("max_pixels", [0, -1, 1.5, "100"])
def test_bad_max_pixels_is_refused(demo_bundle: Path, max_pixels: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="max_pixels must be a positive integer"):
        Stylizer(demo_bundle, max_pixels=max_pixels)


class _Returns:
    def __init__(self, value: Any) -> None:
        self.value = value

    def detect(self, rgb: np.ndarray) -> Any:
        return self.value


@pytest.mark.parametrize(
    ("value", "got"),
    [(None, "NoneType"), ([(10, 10, 50, 50)], "tuple"), ("face", "str"), ([Face(1, 1, 9, 9), None], "NoneType")],
)
def test_custom_detector_returning_junk_is_a_typed_error(demo_bundle: Path, value: Any, got: str) -> None:
    st = Stylizer(demo_bundle, detector=_Returns(value))
    with pytest.raises(BackendError, match=rf"_Returns.detect\(\) returned something other.*available .*{got}"):
        st.classify(ASTRONAUT)


@pytest.mark.parametrize("box", [Face(600, 10, 20, 20), Face(10, 10, 0, 20), Face(-50, -50, 20, 20)])
def test_custom_detector_boxes_outside_the_image(demo_bundle: Path, box: Face) -> None:
    st = Stylizer(demo_bundle, detector=_Returns([box]))
    with pytest.raises(BackendError, match="outside the 512x512 image"):
        st.stylize(ASTRONAUT)


def test_custom_detector_returning_a_tuple_of_faces_works(demo_bundle: Path) -> None:
    st = Stylizer(demo_bundle, detector=_Returns((Face(177, 66, 95, 95),)))
    c = st.classify(ASTRONAUT)
    assert c.source == "face" and c.face == Face(177, 66, 95, 95)


@pytest.mark.parametrize("one", ["photo.jpg", Path("photo.jpg"), b"photo.jpg", ASTRONAUT, ASTRONAUT[None]])
def test_stylize_batch_refuses_a_single_image(st: Stylizer, one: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="stylize_batch takes a list of images.*use stylize"):
        st.stylize_batch(one)


def test_a_bad_image_in_a_batch_names_its_index(st: Stylizer, tmp_path: Path) -> None:
    small = ASTRONAUT[:64, :64]
    with pytest.raises(ImageReadError, match=r"Image 2 of the batch: .*missing\.png"):
        st.stylize_batch([small, small, tmp_path / "missing.png"], emotion="sad")


def test_stylizer_pickles_by_reopening_its_bundle(st: Stylizer) -> None:
    small = np.ascontiguousarray(ASTRONAUT[100:228, 150:278])
    before = st.stylize(small, emotion="happy").image
    clone = pickle.loads(pickle.dumps(st))
    assert clone is not st and clone.manifest.root == st.manifest.root and clone.labels == st.labels
    np.testing.assert_array_equal(clone.stylize(small, emotion="happy").image, before)


def test_stylizer_with_an_unpicklable_detector_says_why(demo_bundle: Path) -> None:
    st = Stylizer(demo_bundle, detector=_Returns(lambda: None))
    with pytest.raises(Exception, match="pickle"):
        pickle.dumps(st)


# -- typed errors that say what they got (issue 22) ----------------------------------------------------------


@pytest.mark.parametrize(("bundle", "got"), [(123, "123 (int)"), (b"bundles/demo", "(bytes)"), (None, "None (NoneType)"),
                                             (["bundles/demo"], "(list)"), ("", "'' (str)"), ("  ", "(str)")])
def test_a_bundle_that_is_not_a_path_is_a_typed_error(bundle: Any, got: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"bundle.*Note: expected .*(path|PathLike)") as info:
        Stylizer(bundle)
    assert got in str(info.value)


@pytest.mark.parametrize(("max_side", "got"), [("100", "'100' (a str)"), (100.0, "100.0 (a float)"),
                                               (True, "True (a bool)"), (2, "available 2.")])
def test_a_bad_max_side_says_what_it_got(st: Stylizer, max_side: Any, got: str) -> None:
    with pytest.raises(InvalidArgumentError, match="max_side must be an integer") as info:
        st.stylize(ASTRONAUT[:64, :64], max_side=max_side)
    assert got in str(info.value)


def test_stream_refuses_timestamps_that_go_backwards(st: Stylizer) -> None:
    f = np.ascontiguousarray(ASTRONAUT[:64, :64])
    with pytest.raises(InvalidArgumentError, match=r"Frame 2's timestamp 0.2 s is before frame 1's \(0.5 s\)"):
        list(st.stream([(0.0, f), (0.5, f), (0.2, f)], emotion="happy"))
    with pytest.raises(InvalidArgumentError, match="Frame 1's timestamp nan s is not finite"):
        list(st.stream([(0.0, f), (float("nan"), f)], emotion="happy"))
    same = list(st.stream([(0.0, f), (0.0, f), (0.1, f)], emotion="happy"))  # equal times are allowed
    assert [x.index for x in same] == [0, 1, 2]


@pytest.mark.parametrize("batch", [1, 2])
def test_a_too_small_frame_names_its_frame_number(st: Stylizer, batch: int) -> None:
    f = np.ascontiguousarray(ASTRONAUT[:64, :64])
    frames = [f, f, f, np.ascontiguousarray(ASTRONAUT[:3, :3])]
    with pytest.raises(Exception, match=r"Frame 3 of the stream: Image of 3x3 is too small") as info:
        list(st.stream(frames, fps=10, emotion="happy", batch=batch))
    assert type(info.value).__name__ == "InvalidImageError"
