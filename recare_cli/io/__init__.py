"""File formats and streams: JSONL, JSON, NPY, safetensors, image folders, atomic writes.

Nothing here imports torch at module load, so ``--help`` stays fast.
"""
