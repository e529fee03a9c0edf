"""The bundle format: the one owner of what a bundle folder holds and how it is read.

- :mod:`.manifest`: ``manifest.json``, its typed blocks and :func:`~.manifest.load_manifest`
  (``emostyle_rt.manifest`` is the same module under its 0.1.0 name).
- :mod:`.jsonio`: the one JSON reader of the format (the manifest and the engine
  sidecars) and its one policy for unknown keys.
- :mod:`.files`: the one path rule for every file the manifest names (nothing
  outside the bundle, ever) and the one sha256 check.
- :mod:`.compiled`: the compiled artifacts (TensorRT plans, AOTInductor
  packages): their manifest entries, JSON sidecars, folder keys and the checks
  that decide whether one may run here; also the runtime graph key of the
  classifier (``CLASSIFIER_KEY``). ``emostyle_rt.engines`` is its 0.1.0 path
  (deprecated).

Nothing here imports numpy, OpenCV or onnxruntime.
"""
