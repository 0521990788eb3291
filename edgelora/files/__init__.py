"""Formats on disk (numpy, json, safetensors): the bundle manifest and its schema, adapter folders,
checkpoints, data loaders (npy/npz/csv), checked atomic writes and the rule for what a command may replace."""
