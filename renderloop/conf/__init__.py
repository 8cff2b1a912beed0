"""Hydra config tree: one primary config per command, groups in sub-folders."""
