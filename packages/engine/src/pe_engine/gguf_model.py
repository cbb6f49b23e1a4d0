"""GGUF files as models: each file is converted once into a cached Hugging Face directory.

The engine loads Hugging Face directories (config.json + safetensors + tokenizer files). A GGUF
holds the same things in llama.cpp's layout, often quantized; transformers' GGUF loader reads it
(config, dequantized weights, tokenizer and chat template), which costs tens of seconds, so the
result is saved once under ``$PE_CACHE_DIR`` (default ``~/.cache/pe``) in a directory keyed by the
file's resolved path, size and modification time: a changed file gets a new entry.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

GGUF_SUFFIX = ".gguf"
GGUF_DTYPES = ("float32", "bfloat16", "float16")
GGUF_PACKAGES = ("gguf", "accelerate")
GGUF_INSTALL_HINT = "pip install 'gguf>=0.17' 'accelerate>=1.1'"


class GGUFSupportMissingError(ImportError):
    """The packages transformers needs to read GGUF files (gguf, accelerate) are missing."""


def cache_dir() -> Path:
    """Where converted models live: ``$PE_CACHE_DIR`` or ``~/.cache/pe``."""
    return Path(os.environ.get("PE_CACHE_DIR") or Path.home() / ".cache" / "pe")


def is_gguf_path(name_or_path: str | os.PathLike[str]) -> bool:
    """True when ``name_or_path`` names a GGUF file (by its suffix; it may not exist)."""
    return str(name_or_path).lower().endswith(GGUF_SUFFIX)


def ensure_gguf_model(path: str | os.PathLike[str], dtype: str = "float32") -> Path:
    """The Hugging Face directory converted from the GGUF file at ``path``, built on first use.

    Weights are dequantized and stored in ``dtype``; float32 keeps every dequantized value
    exactly, and the engine casts to its own dtype when it loads them.
    """
    gguf_file = _existing_gguf_file(path)
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}.")
    return build_once(
        gguf_cache_name(gguf_file, dtype), lambda out: convert_gguf_model(gguf_file, out, dtype)
    )


def gguf_cache_name(gguf_file: Path, dtype: str) -> str:
    """The cache entry's name: the file's stem (readable) and a digest of what identifies this
    version of the file (resolved path, size, mtime), so an edited or replaced file is reconverted."""
    stat = gguf_file.stat()
    identity = f"{gguf_file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", gguf_file.stem)[:80]
    return f"gguf-{stem}-{dtype}-{digest}"


def build_once(name: str, build: Callable[[Path], None]) -> Path:
    """Build ``cache_dir()/name`` once: into a temporary directory, then an atomic rename."""
    target = cache_dir() / name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        build(tmp)
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():  # not a lost race with another process
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf_tokenizer(gguf_file: Path, out: Path) -> None:
    """Write the tokenizer (with its chat template) that ``gguf_file`` describes into ``out``."""
    from transformers import AutoTokenizer

    _require_gguf_support()
    started = time.perf_counter()
    _progress(f"converting the tokenizer of {gguf_file.name} (once) ...")
    with _readable_errors(gguf_file):
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    tokenizer.save_pretrained(str(out))
    _progress(f"tokenizer ready in {time.perf_counter() - started:.0f} s")


def convert_gguf_model(
    gguf_file: Path, out: Path, dtype: str, *, tokenizer_dir: Path | None = None
) -> None:
    """Write ``gguf_file`` as a Hugging Face model directory into ``out``: config, generation
    config, ``dtype`` safetensors, and the tokenizer (copied from ``tokenizer_dir`` when given,
    else converted from the file)."""
    import torch

    _require_gguf_support()
    started = time.perf_counter()
    _progress(f"dequantising {gguf_file.name} (once; large files take minutes) ...")
    model = _dequantized_model(gguf_file, getattr(torch, dtype))
    _progress(f"writing {dtype} weights to {out.name} ...")
    model.save_pretrained(str(out))
    if tokenizer_dir is None:
        convert_gguf_tokenizer(gguf_file, out)
    else:
        for item in tokenizer_dir.iterdir():
            if item.is_file():
                shutil.copy2(item, out / item.name)
    _progress(f"{gguf_file.name} ready in {time.perf_counter() - started:.0f} s")


def _dequantized_model(gguf_file: Path, torch_dtype: Any) -> Any:
    """The GGUF's model with plain ``torch_dtype`` weights, ready for ``save_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM

    with _readable_errors(gguf_file):
        gguf_model = AutoModelForCausalLM.from_pretrained(
            str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
        )
    # The GGUF-loaded model carries a GgufHfQuantizer and refuses save_pretrained: copy its
    # weights into a fresh model built from the config without quantization_config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = str(torch_dtype).removeprefix("torch.")
    state = {k: v.to(torch_dtype) for k, v in gguf_model.state_dict().items()}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    return model


def _existing_gguf_file(path: str | os.PathLike[str]) -> Path:
    gguf_file = Path(path).expanduser()
    if not gguf_file.is_file():
        raise FileNotFoundError(f"GGUF model file not found: {str(path)!r}")
    return gguf_file.resolve()


def _require_gguf_support() -> None:
    missing = [name for name in GGUF_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise GGUFSupportMissingError(
            f"Loading a GGUF file needs the {' and '.join(missing)} package(s): {GGUF_INSTALL_HINT}"
        )


@contextmanager
def _readable_errors(gguf_file: Path) -> Iterator[None]:
    """Turn transformers' failure on an unreadable or unsupported GGUF into a ValueError that
    names the file and keeps transformers' message."""
    try:
        yield
    except ImportError:
        raise
    except Exception as exc:
        raise ValueError(f"Cannot load {gguf_file} as a GGUF model: {exc}") from exc


def _progress(message: str) -> None:
    print(f"[pe gguf] {message}", file=sys.stderr, flush=True)
