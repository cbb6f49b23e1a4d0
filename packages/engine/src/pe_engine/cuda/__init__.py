"""CUDA-only pieces: decode CUDA graphs and KV-cache memory profiling (never imported on
the CPU path).
"""
