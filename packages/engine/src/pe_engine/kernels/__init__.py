"""Accelerator kernels. Nothing here is imported by ``import pe_engine``: the modules import
triton at load, so only the CUDA attention backend (or a test) imports them."""
