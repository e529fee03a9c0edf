"""emostyle-export: trained Keras + PyTorch models -> a verified ONNX bundle.

Heavy frameworks (torch, TensorFlow, tf2onnx, onnx) are imported inside the functions
that need them, so ``emostyle-export --help`` is instant.
"""

#: The ONNX opset of every graph emostyle-export converts (classifier, styles, face detector); the tiled graphs
#: keep their style graph's. The one place to change it: onnxruntime, TensorRT and OpenVINO floors follow from it.
ONNX_OPSET = 17
