"""Proven on aarch64: an emulated Cortex-A72 check (run.sh) and its reports (report.py)."""
