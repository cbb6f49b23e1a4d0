"""The model's token-embedding matrix alone, for backends that hand vLLM full-length embeds.

vLLM takes a prompt either as token ids or as one ``prompt_embeds`` tensor with a row for every
position. pe's prompts are compact (ids, a mask and only the user's rows), so a mixed prompt is
expanded here: token positions get their row of the embedding matrix, embed positions the
user's rows. Only that one tensor is read from the safetensors files (never the whole model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pe_engine.prompt import Prompt

# Names the input-embedding weight has in common decoder checkpoints, most common first.
EMBEDDING_SUFFIXES = (
    "embed_tokens.weight",
    "wte.weight",
    "word_embeddings.weight",
    "tok_embeddings.weight",
    "embedding.weight",
)


class EmbeddingTable:
    """``weight[vocab, hidden]`` of the model in ``dtype``, on the CPU."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight

    @classmethod
    def load(cls, model_dir: str | Path, dtype: torch.dtype) -> EmbeddingTable:
        """Reads only the input-embedding tensor; ``FileNotFoundError`` if there is none."""
        from safetensors import safe_open

        path, key = find_embedding(Path(model_dir))
        with safe_open(str(path), framework="pt", device="cpu") as f:
            weight = f.get_tensor(key)
        return cls(weight.to(dtype).contiguous())

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])

    def prompt_embeds(self, prompt: Prompt) -> torch.Tensor:
        """One row per position of ``prompt``: the matrix's row or the user's row."""
        ids = torch.tensor(prompt.token_ids, dtype=torch.long)
        if prompt.is_token_ids is None or prompt.prompt_embeds is None:
            return self.weight[ids]
        is_token = torch.tensor(prompt.is_token_ids, dtype=torch.bool)
        rows = torch.empty(len(prompt.token_ids), self.hidden_size, dtype=self.weight.dtype)
        rows[is_token] = self.weight[ids[is_token]]
        rows[~is_token] = prompt.prompt_embeds.to(self.weight.dtype)
        return rows


def find_embedding(model_dir: Path) -> tuple[Path, str]:
    """(safetensors file, tensor name) of the input embeddings in a Hugging Face directory."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        key = pick_embedding_key(weight_map)
        if key is not None:
            return model_dir / weight_map[key], key
    from safetensors import safe_open

    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            key = pick_embedding_key(list(f.keys()))
        if key is not None:
            return path, key
    raise FileNotFoundError(f"no input-embedding tensor in the safetensors files of {model_dir}")


def pick_embedding_key(names: object) -> str | None:
    candidates = [str(n) for n in names]  # type: ignore[attr-defined]
    for suffix in EMBEDDING_SUFFIXES:
        matches = sorted(n for n in candidates if n.endswith(suffix) and "vision" not in n)
        if matches:
            return min(matches, key=len)  # "model.embed_tokens.weight" over deeper copies
    return None
