"""The bundle format: the one owner of what a bundle folder holds and how it is read.

- :mod:`.manifest`: ``manifest.json``, its typed blocks and :func:`~.manifest.load_manifest`
  (``emostyle_rt.manifest`` is the same module under its 0.1.0 name).
- :mod:`.jsonio`: the one JSON reader of the format (the manifest and the engine
  sidecars) and its one policy for unknown keys.
- :mod:`.files`: the one path rule for every file the manifest names (nothing
  outside the bundle, ever) and the one sha256 check.

Engine entries and sidecars (TensorRT plans, AOTInductor packages) are typed in
:mod:`emostyle_rt.engines` and read with :mod:`.jsonio`. Nothing here imports
numpy, OpenCV or onnxruntime.
"""
