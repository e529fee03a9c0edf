"""Face detection and the classifier's face crop.

- :mod:`.faces`: the ``FaceDetector`` protocol, ``Face``, OpenCV's Haar and YuNet detectors, the registry
  (``DETECTORS``, ``DETECTOR_FILES``, ``make_detector``) and the crop (``crop_face``).
- :mod:`.mtcnn`: the bundle's MTCNN in numpy + onnxruntime (or OpenVINO).

The names below are imported from their module on first use (PEP 562), so importing one module does not load the
other (``emostyle_rt.faces`` and ``emostyle_rt.mtcnn`` are the deprecated 0.1.0 paths of these modules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._exports import lazy_exports

#: Public name -> the module of this package that defines it.
_EXPORTS = {
    **dict.fromkeys(("DETECTORS", "DETECTOR_FILES", "Face", "FaceDetector", "HaarDetector", "Landmarks",
                     "YuNetDetector", "crop_face", "crop_rect", "downscale", "haar_available", "make_detector"),
                    "faces"),
    **dict.fromkeys(("MTCNN_DETECT_SIDE", "MtcnnDetector", "crop_and_resize", "fast_nms", "graph_provider",
                     "level_shape", "pyramid_scales"), "mtcnn"),
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .faces import (DETECTOR_FILES, DETECTORS, Face, FaceDetector, HaarDetector, Landmarks, YuNetDetector,
                        crop_face, crop_rect, downscale, haar_available, make_detector)
    from .mtcnn import (MTCNN_DETECT_SIDE, MtcnnDetector, crop_and_resize, fast_nms, graph_provider, level_shape,
                        pyramid_scales)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
