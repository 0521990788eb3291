"""Workstation side: torch model (or .pt2 program, or factory + state dict) -> edgelora backbone bundle.

The only package of edgelora that imports torch. The folder is export/; it installs as `edgelora_export`
(pyproject.toml), so `from edgelora_export import export_model`. Device-side ONNX -> bundle is
edgelora.graphs.onnx_taps.
"""
from .torch_export import export_model, verify

__all__ = ["export_model", "verify"]
