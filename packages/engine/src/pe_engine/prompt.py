"""Prompt: token ids plus the rows of user embeddings at the positions the mask marks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class Prompt:
    """One prompt in the engine's compact form.

    ``token_ids`` has one entry per position (T); embed positions hold a placeholder id that is
    never looked up. ``prompt_embeds`` holds only the E embed rows (E == count of False in
    ``is_token_ids``), in position order. ``is_token_ids`` None means every position is a token.
    ``cache_salt`` (vLLM's field) enters the hash of the first prefix-cache block, so prompts
    with different salts never share cached blocks.
    ``is_checked``: :class:`~pe_engine.inputs.prompt_builder.PromptBuilder` checked its contents
    (ids, mask, embeds) for the engine's model; the engine then trusts them and checks only the
    O(1) sizes (context length, KV pool). Whoever changes a checked prompt's contents owns it.
    """

    token_ids: list[int]
    prompt_embeds: torch.Tensor | None = None
    is_token_ids: list[bool] | None = None
    text: str | None = None
    cache_salt: str | None = None
    is_checked: bool = field(default=False, compare=False, repr=False)
    # The prefix cache's key of each embeds row (16 bytes each), when known in advance (rows of
    # a stored object); None: hashed from the rows when needed.
    embeds_row_keys: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_embeds(self) -> int:
        return 0 if self.prompt_embeds is None else int(self.prompt_embeds.shape[0])

    @property
    def is_pure_embeds(self) -> bool:
        return self.prompt_embeds is not None and self.num_embeds == self.num_tokens

    def validate(self) -> None:
        """Check the invariants between ids, mask and embeds; ``ValueError`` when broken."""
        if self.num_tokens == 0:
            raise ValueError("prompt must contain at least one position.")
        if self.cache_salt is not None and (
            not isinstance(self.cache_salt, str) or not self.cache_salt
        ):
            raise ValueError("cache_salt must be a non-empty string if provided.")
        if self.is_token_ids is None:
            if self.prompt_embeds is not None:
                raise ValueError("prompt_embeds given without is_token_ids.")
            return
        if len(self.is_token_ids) != self.num_tokens:
            raise ValueError(
                f"is_token_ids has {len(self.is_token_ids)} entries, expected {self.num_tokens}."
            )
        num_embed_positions = self.is_token_ids.count(False)
        if self.prompt_embeds is None:
            if num_embed_positions:
                raise ValueError("is_token_ids marks embed positions but prompt_embeds is None.")
            return
        if self.prompt_embeds.dim() != 2:
            raise ValueError(f"prompt_embeds must be 2-D, got {self.prompt_embeds.dim()}-D.")
        if self.num_embeds != num_embed_positions:
            raise ValueError(
                f"prompt_embeds has {self.num_embeds} rows but is_token_ids marks "
                f"{num_embed_positions} embed positions."
            )
