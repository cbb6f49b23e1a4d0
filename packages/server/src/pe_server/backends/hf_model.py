"""What pe itself needs from a Hugging Face model directory when another engine runs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pe_server.config import ServerConfig


@dataclass(frozen=True)
class ModelFiles:
    """Tokenizer, chat builder and sizes of the served model (no weights loaded)."""

    model_dir: Path
    tokenizer: Any
    chat_builder: Any
    dtype: torch.dtype
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int


def load_model_files(config: ServerConfig) -> ModelFiles:
    from transformers import AutoConfig, AutoTokenizer

    from pe_engine.demo_model import resolve_model
    from pe_engine.inputs.chat import ChatPromptBuilder

    model_dir = Path(resolve_model(config.model))
    hf = AutoConfig.from_pretrained(str(model_dir))
    hf = hf.get_text_config() if hasattr(hf, "get_text_config") else hf  # multimodal wrappers
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or str(model_dir))
    return ModelFiles(
        model_dir=model_dir,
        tokenizer=tokenizer,
        chat_builder=ChatPromptBuilder(tokenizer, enable_prompt_embeds=config.enable_prompt_embeds),
        dtype=model_dtype(config.dtype, hf),
        hidden_size=int(hf.hidden_size),
        vocab_size=int(hf.vocab_size),
        max_position_embeddings=int(getattr(hf, "max_position_embeddings", 2048)),
    )


def model_dtype(wanted: str, hf_config: Any) -> torch.dtype:
    """``--dtype``, or the checkpoint's declared dtype for ``auto`` (float32 if none)."""
    if wanted != "auto":
        return getattr(torch, wanted)
    declared = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    return declared if isinstance(declared, torch.dtype) else torch.float32
