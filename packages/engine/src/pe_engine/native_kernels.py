"""pe's small C kernels: compiled once per machine with the system compiler, loaded with ctypes.

A kernel's source ships inside the package; ``build_library`` compiles it with the given flags
(``-march=native`` among them) into ``$PE_CACHE_DIR/kernels`` (default ``~/.cache/pe/kernels``)
under a name keyed by the source, flags, compiler and CPU, so a library is only ever loaded on
the kind of CPU it was built for, and loads it. Without a compiler, or when the source does
not compile here (an instruction set the CPU lacks), it raises :class:`KernelBuildError` and the
caller keeps its torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pe_engine.gguf_model import cache_dir

# What every kernel is built with: native instructions, OpenMP threads, no errno from libm
# (which would keep math calls out of vector loops), a shared library.
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fPIC", "-shared")


class KernelBuildError(RuntimeError):
    """A C kernel could not be compiled or loaded here (the message says why)."""


def build_library(package: str, source_name: str, flags: Sequence[str] = FLAGS) -> ctypes.CDLL:
    """The library of ``package``'s ``source_name``, built with ``flags`` unless cached."""
    source = resources.files(package).joinpath(source_name).read_bytes()
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise KernelBuildError("no C compiler (cc or gcc) on PATH")
    stem = source_name.removesuffix(".c")
    path = kernel_dir() / f"{stem}-{build_key(source, compiler, flags)}.so"
    if not path.is_file():
        compile_library(compiler, flags, source_name, source, path)
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        raise KernelBuildError(f"cannot load {path}: {exc}") from exc


def addresses(*functions: Any) -> tuple[int, ...]:
    """The addresses of loaded C functions, for C code that calls them through pointers (the
    int8 decode layer calls the fused ops and the attention kernel so)."""
    return tuple(ctypes.cast(fn, ctypes.c_void_p).value or 0 for fn in functions)


def kernel_dir() -> Path:
    path = cache_dir() / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_key(source: bytes, compiler: str, flags: Sequence[str]) -> str:
    """Source, flags, compiler and CPU: ``-march=native`` code belongs to the CPU it saw."""
    digest = hashlib.sha256(source)
    digest.update(" ".join([compiler, *flags, platform.machine(), _cpu_flags()]).encode())
    return digest.hexdigest()[:16]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def compile_library(
    compiler: str, flags: Sequence[str], source_name: str, source: bytes, path: Path
) -> None:
    """Compile into a temporary file beside ``path``, then rename: concurrent processes
    building the same kernel each finish with a whole library."""
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        src = Path(tmp) / source_name
        src.write_bytes(source)
        built = Path(tmp) / path.name
        cmd = [compiler, *flags, str(src), "-o", str(built)]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise KernelBuildError(f"{' '.join(cmd)} failed: {detail.strip()[-2000:]}") from exc
        os.replace(built, path)
