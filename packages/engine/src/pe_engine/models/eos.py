"""The model's end-of-sequence ids: one set, used by stopping, min_tokens and ignore_eos.

A model may name its EOS in three places that disagree (instruct models often list the chat
end token only in generation_config.json, as a list). Stopping on one set while min_tokens bans
another lets an EOS through mid-output, so every consumer takes this union.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def eos_token_ids(model_dir: str | Path, hf_config: Any, tokenizer: Any = None) -> frozenset[int]:
    """EOS ids from generation_config.json's and config.json's ``eos_token_id`` (an int or a
    list) and the tokenizer's ``eos_token_id``."""
    candidates = [
        _generation_config_eos(Path(model_dir)),
        getattr(hf_config, "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ]
    ids: set[int] = set()
    for candidate in candidates:
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, (list, tuple)):
            ids.update(int(c) for c in candidate)
    return frozenset(ids)


def _generation_config_eos(model_dir: Path) -> Any:
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("eos_token_id")
