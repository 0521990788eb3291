"""ONNX graph work (onnx; onnxruntime only to check or convert what is written): merged models and ORT
adapter files, training kits for clients without Python, and the taps of an existing .onnx model."""
