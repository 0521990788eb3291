"""ONNX graph work (onnx; onnxruntime only to check or convert what is written): merged models and ORT
adapter files, training kits for clients without Python, and the taps of an existing .onnx model.
onnx is an optional extra (`graphs`): fine-tuning, evaluation and prediction on a device never import this
package, and importing it without onnx fails with one line that says how to install it."""

try:
    import onnx  # noqa: F401  - every module here builds or edits ONNX graphs
except ImportError as e:
    raise ModuleNotFoundError(f"building ONNX graphs (kit, merge, export of an .onnx model, the ONNX trainer) needs "
                              f"the optional onnx package ({e}); install it from the edgelora clone with: "
                              f"pip install -e '.[graphs]'",
                              name="onnx") from None
