"""Offline generation from prompt embeddings with pe-engine's ``LLM``: no server involved.

Run: ``python examples/offline_generation.py [MODEL_DIR]`` (default: the demo model,
SmolLM2-135M-Instruct, converted on first use into ~/.cache/pe/).

The same prompt goes in three ways, greedy: as text, as embeddings looked up in the model's own
embedding table (the output must be identical), and as a mix of text ids and embeddings rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors import safe_open

from pe_engine import LLM, SamplingParams
from pe_engine.demo_model import resolve_model

PROMPT = "The three primary colours are"


def embedding_table(model_dir: Path) -> torch.Tensor:
    """The model's token-embedding matrix, read straight from its safetensors file(s)."""
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            if "model.embed_tokens.weight" in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                return f.get_tensor("model.embed_tokens.weight").float()
    raise SystemExit(f"no model.embed_tokens.weight in {model_dir}")


def main() -> None:
    model_dir = resolve_model(sys.argv[1] if len(sys.argv) > 1 else "demo")
    llm = LLM(str(model_dir), enable_prompt_embeds=True, dtype="float32", max_model_len=512)
    ids = llm.get_tokenizer().encode(PROMPT, add_special_tokens=False)
    embeds = embedding_table(model_dir)[ids]  # (num_tokens, hidden_size): a stand-in encoder
    params = SamplingParams(max_tokens=24, temperature=0.0)

    half = len(ids) // 2
    text, from_embeds, mixed = llm.generate(
        [
            PROMPT,
            {"prompt_embeds": embeds},
            {  # first half as token ids, second half as embeddings rows
                "prompt_token_ids": ids[:half] + [0] * (len(ids) - half),
                "prompt_embeds": embeds[half:],
                "is_token_ids": [True] * half + [False] * (len(ids) - half),
            },
        ],
        params,
        use_tqdm=False,
    )
    for name, out in (("text", text), ("embeds", from_embeds), ("mixed", mixed)):
        print(f"{name:>6}: {PROMPT}{out.outputs[0].text!r}")
    same = (
        text.outputs[0].token_ids == from_embeds.outputs[0].token_ids == mixed.outputs[0].token_ids
    )
    print("identical greedy outputs:", same)
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
