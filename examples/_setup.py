"""What the client examples share: the model to ask, its hidden size, and stand-in embeddings.

Environment: PE_MODEL (default: the server's first model), PE_HIDDEN_SIZE (default: the model
card's hidden_size, else 576 = SmolLM2-135M). Each example imports this file from its own folder,
so `python examples/X.py` runs from anywhere.
"""

from __future__ import annotations

import os

import numpy as np

from pe_client import PEClient


def model_and_hidden_size(client: PEClient) -> tuple[str, int]:
    card = client.models.list().data[0]
    model = os.environ.get("PE_MODEL") or card.id
    hidden = os.environ.get("PE_HIDDEN_SIZE") or getattr(card, "hidden_size", None) or 576
    return model, int(hidden)


def random_embeds(num_tokens: int, hidden: int, seed: int) -> np.ndarray:
    """Random stand-ins for what your encoder, projector or embedding table would produce."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((num_tokens, hidden)) * 0.05).astype(np.float32)
