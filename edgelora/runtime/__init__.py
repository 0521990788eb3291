"""onnxruntime at work: the frozen backbone, the Skip-Cache of its taps, prediction and fine-tuning."""
