"""The cases of `benchmarks/gpu_check.py`, one module per concern (training steps, the shard loader)."""
