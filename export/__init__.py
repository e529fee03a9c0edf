"""emostyle-export: trained Keras + PyTorch models -> a verified ONNX bundle.

Installed as ``emostyle_export`` (the repo folder is ``export/``). Heavy
frameworks (torch, TensorFlow, tf2onnx, onnx) are imported inside the functions
that need them, so ``emostyle-export --help`` is instant.
"""
