"""Attention backends: the torch reference, pe's C kernel for the CPU and the Triton
kernels for CUDA (imported only on CUDA).
"""
