"""StylizerOptions: one checked value for every option a Stylizer takes, by keywords or ``options=``, pickled."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from pathlib import Path

import pytest

import emostyle_rt
from emostyle_rt import Stylizer, StylizerOptions
from emostyle_rt.backends import BACKENDS, PRECISIONS
from emostyle_rt.errors import BackendError, InvalidArgumentError, MemoryBudgetError
from emostyle_rt.options import OPTION_NAMES
from emostyle_rt.tiling import TILE_MODES


def test_options_are_public_frozen_and_normalised() -> None:
    assert emostyle_rt.StylizerOptions is StylizerOptions and "StylizerOptions" in emostyle_rt.__all__
    o = StylizerOptions(memory_budget="2GB", margin=1, tile_mode="fast")
    assert (o.memory_budget, o.margin, o.tile_mode) == (2 * 10**9, 1.0, "fast")
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.backend = "onnxruntime"  # type: ignore[misc]
    assert o.replace(precision="fp32").precision == "fp32" and o.precision == "auto"
    assert StylizerOptions(**o.as_dict()) == o
    with pytest.raises(TypeError, match="nope"):
        o.replace(nope=1)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"backend": "magic"}, BackendError, "Unknown backend 'magic'.*Note: expected " + " or ".join(BACKENDS)),
    ({"provider": "npu"}, BackendError, "Unknown onnxruntime provider 'npu'.*Note: expected"),
    ({"precision": "int4"}, BackendError, "Unknown precision 'int4'.*Note: expected " + " or ".join(PRECISIONS)),
    ({"tile_mode": "quick"}, InvalidArgumentError, "Unknown tile_mode 'quick'.*Note: expected " + " or ".join(TILE_MODES)),
    ({"margin": 3.0}, InvalidArgumentError, "margin must be.*Note: expected"),
    ({"margin": True}, InvalidArgumentError, "margin must be"),
    ({"max_pixels": 0}, InvalidArgumentError, "max_pixels must be a positive integer.*Note: expected"),
    ({"max_pixels": 2.5}, InvalidArgumentError, "max_pixels"),
    ({"verify": "yes"}, InvalidArgumentError, "verify must be True or False"),
    ({"cuda_graph": 1}, InvalidArgumentError, "cuda_graph must be True or False"),
    ({"cache_dir": b"/tmp"}, InvalidArgumentError, "cache_dir must be a folder path"),
    ({"no_face": 3}, InvalidArgumentError, "no-face policy"),
    ({"memory_budget": "lots"}, MemoryBudgetError, "Note: expected"),
])
def test_bad_options_are_refused_with_typed_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        StylizerOptions(**kwargs)


def test_keywords_and_options_make_the_same_stylizer(demo_bundle: Path) -> None:
    kw = {"backend": "onnxruntime", "memory_budget": "1GB", "tile_mode": "fast", "no_face": "happy", "margin": 0.3,
          "max_pixels": 5_000_000}
    by_kw, by_options = Stylizer(demo_bundle, **kw), Stylizer(demo_bundle, options=StylizerOptions(**kw))
    assert by_kw.options == by_options.options == StylizerOptions(**kw)
    assert (by_kw.memory_budget, by_kw.tile_mode, by_kw.no_face, by_kw.margin, by_kw.max_pixels) == \
        (10**9, "fast", "happy", 0.3, 5_000_000)
    # keywords given with options= replace those options
    both = Stylizer(demo_bundle, options=StylizerOptions(**kw), tile_mode="exact")
    assert both.options == StylizerOptions(**{**kw, "tile_mode": "exact"})
    with pytest.raises(InvalidArgumentError, match="options must be a StylizerOptions"):
        Stylizer(demo_bundle, options={"backend": "onnxruntime"})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Stylizer(demo_bundle, colour="red")
    with pytest.raises(InvalidArgumentError, match="no-face policy"):
        Stylizer(demo_bundle, no_face="joy")  # needs the bundle's labels: checked by the Stylizer


def test_the_stylizer_signature_names_every_option_once() -> None:
    """The Stylizer takes its options as ``options=`` or by the names of StylizerOptions' fields: no second list."""
    params = inspect.signature(Stylizer).parameters
    assert list(params) == ["bundle", "options", "kwargs"]
    for name in OPTION_NAMES:  # each documented where the reader of Stylizer looks
        assert f"``{name}``" in Stylizer.__doc__


def test_pickling_carries_the_options(demo_bundle: Path) -> None:
    st = Stylizer(demo_bundle, backend="onnxruntime", memory_budget="1GB", tile_mode="fast", precision="fp32",
                  no_face="error", margin=0.5, max_pixels=1_000_000)
    back = pickle.loads(pickle.dumps(st))
    assert back.options == st.options and back.manifest.root == st.manifest.root
    assert (back.memory_budget, back.tile_mode, back.no_face) == (10**9, "fast", "error")
    # the state a Stylizer of the previous release pickled (the options as keywords) still opens
    old = {"bundle": str(demo_bundle), "backend": "onnxruntime", "provider": None, "detector": None, "no_face": "whole",
           "margin": None, "max_pixels": 7, "verify": True, "precision": "auto", "cuda_graph": False, "cache_dir": None,
           "memory_budget": 5, "tile_mode": "exact"}
    revived = Stylizer.__new__(Stylizer)
    revived.__setstate__(old)
    assert revived.options == StylizerOptions(backend="onnxruntime", max_pixels=7, memory_budget=5)


def test_an_explicit_precision_that_cannot_run_is_refused_at_start(demo_bundle: Path) -> None:
    """Refused when the Stylizer opens, once, not at each image (the demo bundle has no FP16 graphs)."""
    with pytest.raises(BackendError, match="bf16.*OpenVINO only"):
        Stylizer(demo_bundle, backend="onnxruntime", precision="bf16")
    with pytest.raises(BackendError, match="precision='fp16'.*no FP16 graph.*Note: expected"):
        Stylizer(demo_bundle, precision="fp16")


def test_check_max_side_is_public(demo_bundle: Path) -> None:
    st = Stylizer(demo_bundle)
    st.check_max_side(None)
    st.check_max_side(st.manifest.min_side)
    with pytest.raises(InvalidArgumentError, match="max_side must be an integer"):
        st.check_max_side(st.manifest.min_side - 1)
    with pytest.raises(InvalidArgumentError, match="max_side"):
        st.check_max_side("512")  # type: ignore[arg-type]


def test_fp16_without_every_styles_fp16_graph_is_refused_at_start(demo_bundle: Path) -> None:
    """A bundle whose classifier has an FP16 graph but whose styles do not: refused when the Stylizer opens."""
    from emostyle_rt.manifest import Fp16Graph, load_manifest

    m = load_manifest(demo_bundle)
    c = m.classifier  # its FP32 graph stands in for an FP16 one: the style graphs' check is what is tested
    m = dataclasses.replace(m, classifier=dataclasses.replace(c, fp16=Fp16Graph(c.onnx, c.sha256, c.sha256, {})))
    with pytest.raises(BackendError, match=rf"no FP16 graph for {len(m.styles)} of its {len(m.styles)} style graphs"):
        Stylizer(m, precision="fp16", backend="onnxruntime")
