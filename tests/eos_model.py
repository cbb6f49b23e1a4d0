"""Tiny models whose EOS ids are spread over generation_config.json (a list), config.json and
the tokenizer, chosen among the tokens greedy decoding emits (shared by engine and server tests).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

PROMPT = "One EOS set for every consumer"
EOS_AT = 3  # the position, in the free greedy run, of the token made an EOS id
IM_END = 2  # the SmolLM2 tokenizer's own EOS (<|im_end|>)


def free_greedy_run(model_dir: Path, max_tokens: int = 24) -> list[int]:
    """The greedy continuation of ``PROMPT`` without any stop, by the offline engine."""
    from pe_engine import LLM, SamplingParams

    llm = LLM(str(model_dir), dtype="float32", device="cpu", max_model_len=64, num_kv_blocks=16)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    ids = list(llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0].token_ids)
    assert len(ids) == max_tokens and IM_END not in ids
    return ids


def unused_id(free_run: list[int]) -> int:
    """An id greedy decoding never emits here: a listed EOS that must not matter."""
    return next(t for t in range(100, 1000) if t not in free_run)


def write_multi_eos_model(
    src: Path, dst: Path, *, generation: list[int], config: int, tokenizer: int
) -> Path:
    """A copy of the model in ``src`` with these EOS ids in each of the three places."""
    from transformers import AutoTokenizer

    shutil.copytree(src, dst)
    _update_json(dst / "generation_config.json", eos_token_id=generation)
    _update_json(dst / "config.json", eos_token_id=config)
    token = AutoTokenizer.from_pretrained(str(src)).convert_ids_to_tokens(tokenizer)
    _update_json(dst / "tokenizer_config.json", eos_token=token)
    return dst


def _update_json(path: Path, **values: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))
