"""Kernels. ``triton_paged`` imports triton at load, so only the CUDA attention backend (or a
test) imports it; ``cpu_attention.c`` is C source that ``pe_engine.attention.cpu`` compiles once per
machine. Importing this package itself imports neither."""
