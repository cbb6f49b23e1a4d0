"""Build validated :class:`Prompt` objects from text, token ids, embeddings or a mix of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pe_common.codec import EmbedsLimits, validate_prompt_embeds_tensor
from pe_common.errors import InvalidRequestError, PEValidationError, PromptEmbedsError
from pe_engine.core.row_keys import known_row_keys
from pe_engine.inputs.embeds_store import StoredEmbeds
from pe_engine.prompt import Prompt

PLACEHOLDER_TOKEN_ID = 0
ENABLE_FLAG_MESSAGE = "You must set `--enable-prompt-embeds` to input `prompt_embeds`"


def embeds_disabled_error(*, period: bool = True) -> PromptEmbedsError:
    """vLLM's wording (the chat variant has no final period)."""
    return PromptEmbedsError(
        ENABLE_FLAG_MESSAGE + ("." if period else ""), code="prompt_embeds_disabled"
    )


def build_text_prompt(tokenizer: Any, text: str, *, add_special_tokens: bool = True) -> Prompt:
    """Tokenize ``text`` the way vLLM does (special tokens added per the tokenizer's config)."""
    if not isinstance(text, str):
        raise InvalidRequestError("prompt must be a string.", code="invalid_prompt", param="prompt")
    ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return Prompt(token_ids=list(ids), prompt_embeds=None, is_token_ids=None, text=text)


def build_token_prompt(token_ids: Sequence[int], *, vocab_size: int | None = None) -> Prompt:
    ids = check_token_ids(token_ids, vocab_size, param="prompt_token_ids")
    return Prompt(token_ids=ids, prompt_embeds=None, is_token_ids=None, text=None)


def build_embeds_prompt(
    prompt_embeds: torch.Tensor,
    *,
    hidden_size: int | None = None,
    dtype: torch.dtype | None = None,
    limits: EmbedsLimits | None = None,
) -> Prompt:
    """A pure-embeds prompt; validated through pe_common's codec when the model is given."""
    if hidden_size is not None and dtype is not None:
        prompt_embeds = _validate_embeds(prompt_embeds, hidden_size, dtype, limits)
    num_rows = int(prompt_embeds.shape[0])
    return Prompt(
        token_ids=[PLACEHOLDER_TOKEN_ID] * num_rows,
        prompt_embeds=prompt_embeds,
        is_token_ids=[False] * num_rows,
        text=None,
        embeds_row_keys=known_row_keys(prompt_embeds),
    )


def build_mixed_prompt(
    token_ids: Sequence[int],
    prompt_embeds: torch.Tensor,
    is_token_ids: Sequence[bool],
    *,
    hidden_size: int,
    dtype: torch.dtype,
    vocab_size: int | None = None,
    limits: EmbedsLimits | None = None,
) -> Prompt:
    """Mixed ids + embeds in vLLM's form (all T rows) or the compact one (only the E embed rows).

    ``is_token_ids[i]`` is True where ``token_ids[i]`` is a real id, False where the row comes
    from ``prompt_embeds``. The result always holds only the E embed rows.
    """
    mask = _check_mask(is_token_ids, len(token_ids))
    embeds = _validate_embeds(prompt_embeds, hidden_size, dtype, limits)
    num_embeds = mask.count(False)
    if embeds.shape[0] == len(mask) and num_embeds != len(mask):
        embeds = embeds[torch.tensor([not m for m in mask])].contiguous()
    elif embeds.shape[0] != num_embeds:
        raise PromptEmbedsError(
            f"prompt_embeds has {embeds.shape[0]} rows; expected {num_embeds} (one per False "
            f"entry of is_token_ids) or {len(mask)} (one per prompt position).",
            code="size_mismatch",
        )
    real_ids = [t for t, m in zip(token_ids, mask, strict=True) if m]
    check_token_ids(real_ids, vocab_size, param="prompt_token_ids", allow_empty=True)
    ids = [int(t) if m else PLACEHOLDER_TOKEN_ID for t, m in zip(token_ids, mask, strict=True)]
    if num_embeds == 0:
        return Prompt(token_ids=ids, prompt_embeds=None, is_token_ids=None, text=None)
    return Prompt(token_ids=ids, prompt_embeds=embeds, is_token_ids=mask, text=None)


def check_token_ids(
    token_ids: Sequence[int],
    vocab_size: int | None,
    *,
    param: str = "prompt",
    allow_empty: bool = False,
) -> list[int]:
    """Plain ints in ``[0, vocab_size)``; raises InvalidRequestError naming ``param``."""
    if isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Sequence):
        raise InvalidRequestError(
            "Token ids must be a list of integers.", code="invalid_token_ids", param=param
        )
    ids = list(token_ids)
    if not allow_empty:
        check_not_empty(len(ids), param=param)
    for tid in ids:
        if isinstance(tid, bool) or not isinstance(tid, int):
            raise InvalidRequestError(
                "Token ids must be a list of integers.", code="invalid_token_ids", param=param
            )
        if tid < 0 or (vocab_size is not None and tid >= vocab_size):
            raise InvalidRequestError(
                f"Token id {tid} is out of vocabulary (vocabulary size {vocab_size}).",
                code="invalid_token_id",
                param=param,
            )
    return ids


def check_not_empty(num_tokens: int, *, param: str = "prompt") -> None:
    """vLLM's refusal of a prompt with no positions."""
    if num_tokens == 0:
        raise InvalidRequestError(
            "The decoder prompt cannot be empty", code="empty_prompt", param=param
        )


def check_prompt_length(num_tokens: int, max_model_len: int, *, param: str = "prompt") -> None:
    """A prompt must leave room for at least one output token (vLLM's rule and wording)."""
    check_not_empty(num_tokens, param=param)
    if num_tokens >= max_model_len:
        raise InvalidRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains {num_tokens} input tokens, which leaves no room for the requested "
            "output tokens (at least 1). Please reduce the length of the prompt.",
            code="context_length_exceeded",
            param=param,
        )


def _validate_embeds(
    t: Any, hidden_size: int, dtype: torch.dtype, limits: EmbedsLimits | None
) -> torch.Tensor:
    if isinstance(t, StoredEmbeds):
        # Validated when stored (LLM.create_embeds); width and dtype are checked again with the
        # rest of the prompt (PromptBuilder.check_contents), the rows are not read again.
        return t.tensor
    if not isinstance(t, torch.Tensor):
        raise PromptEmbedsError(
            "`prompt_embeds` must be a torch.Tensor.", code="unsupported_tensor_kind"
        )
    return validate_prompt_embeds_tensor(
        t, hidden_size=hidden_size, dtype=dtype, limits=limits or EmbedsLimits()
    )


def _check_mask(is_token_ids: Any, length: int) -> list[bool]:
    if isinstance(is_token_ids, torch.Tensor):
        is_token_ids = is_token_ids.tolist()
    if not isinstance(is_token_ids, Sequence) or any(not isinstance(m, bool) for m in is_token_ids):
        raise InvalidRequestError(
            "is_token_ids must be a list of booleans.", code="invalid_mask", param="is_token_ids"
        )
    if len(is_token_ids) != length:
        raise InvalidRequestError(
            f"is_token_ids must have the same length as prompt_token_ids (expected {length}, "
            f"got {len(is_token_ids)}).",
            code="size_mismatch",
            param="is_token_ids",
        )
    return list(is_token_ids)


@dataclass(frozen=True)
class PromptBuilder:
    """Turns the offline API's prompt forms into validated prompts for one model."""

    tokenizer: Any
    hidden_size: int
    dtype: torch.dtype
    vocab_size: int
    max_model_len: int
    enable_prompt_embeds: bool = False
    limits: EmbedsLimits = field(default_factory=EmbedsLimits)

    def build(self, prompt: str | Mapping[str, Any] | Prompt) -> Prompt:
        """Accepts a str, ``{"prompt"}``, ``{"prompt_token_ids"}``, ``{"prompt_embeds"}``,
        mixed ``{"prompt_token_ids", "prompt_embeds", "is_token_ids" | "prompt_is_token_ids"}``
        or a ready :class:`Prompt`. ``prompt_embeds`` may be a stored object that the caller
        resolved (:class:`~pe_engine.inputs.embeds_store.EmbedsLease`): its rows were checked
        when stored and are used as they are. A prompt already checked (:meth:`check_contents`)
        is not read again: only its length is checked (O(1))."""
        built = self._build(prompt)
        if built.is_checked:
            check_prompt_length(built.num_tokens, self.max_model_len, param=prompt_param(built))
            return built
        return self.validate(built)

    def _build(self, prompt: Any) -> Prompt:
        if isinstance(prompt, Prompt):
            return prompt
        if isinstance(prompt, str):
            return build_text_prompt(self.tokenizer, prompt)
        if not isinstance(prompt, Mapping):
            raise InvalidRequestError(
                "A prompt must be a str or a dict with 'prompt', 'prompt_token_ids' or "
                "'prompt_embeds'.",
                code="invalid_prompt",
                param="prompt",
            )
        if prompt.get("prompt_embeds") is not None:
            return self._build_embeds(prompt)
        if prompt.get("prompt_token_ids") is not None:
            return build_token_prompt(prompt["prompt_token_ids"], vocab_size=self.vocab_size)
        if isinstance(prompt.get("prompt"), str):
            return build_text_prompt(self.tokenizer, prompt["prompt"])
        raise InvalidRequestError(
            "A prompt dict needs 'prompt', 'prompt_token_ids' or 'prompt_embeds'.",
            code="invalid_prompt",
            param="prompt",
        )

    def _build_embeds(self, prompt: Mapping[str, Any]) -> Prompt:
        if not self.enable_prompt_embeds:
            raise embeds_disabled_error()
        mask = prompt.get("is_token_ids", prompt.get("prompt_is_token_ids"))
        token_ids = prompt.get("prompt_token_ids")
        if token_ids is None and mask is None:
            return build_embeds_prompt(
                prompt["prompt_embeds"],
                hidden_size=self.hidden_size,
                dtype=self.dtype,
                limits=self.limits,
            )
        if token_ids is None or mask is None:
            raise InvalidRequestError(
                "Mixed prompts need both prompt_token_ids and is_token_ids.",
                code="invalid_prompt",
                param="is_token_ids" if mask is None else "prompt_token_ids",
            )
        return build_mixed_prompt(
            token_ids,
            prompt["prompt_embeds"],
            mask,
            hidden_size=self.hidden_size,
            dtype=self.dtype,
            vocab_size=self.vocab_size,
            limits=self.limits,
        )

    def validate_embeds(self, prompt_embeds: Any) -> torch.Tensor:
        """An in-memory tensor checked and cast exactly as a ``{"prompt_embeds": tensor}`` prompt's
        (rank, width, finite values, sparse densified, model dtype): an owned CPU copy."""
        if not self.enable_prompt_embeds:
            raise embeds_disabled_error()
        if isinstance(prompt_embeds, StoredEmbeds):
            raise PromptEmbedsError(
                "`prompt_embeds` is already a stored object.", code="unsupported_tensor_kind"
            )
        return _validate_embeds(prompt_embeds, self.hidden_size, self.dtype, self.limits)

    def validate(self, prompt: Prompt) -> Prompt:
        """Every check a prompt must pass before it reaches the engine, whatever built it;
        returns it marked checked (:attr:`Prompt.is_checked`)."""
        if not isinstance(prompt, Prompt):
            raise InvalidRequestError("expected a Prompt.", code="invalid_prompt", param="prompt")
        check_prompt_length(prompt.num_tokens, self.max_model_len, param=prompt_param(prompt))
        return self.check_contents(prompt)

    def check_contents(self, prompt: Prompt, *, param: str | None = None) -> Prompt:
        """The checks that read the whole prompt (ids in vocabulary, ids / mask / embeds agree,
        embeds allowed and of the model's width and dtype), once, where the prompt is built
        (the server's decode and render pools, the offline caller's thread); marks it checked so
        that the engine thread trusts it. The context length is the caller's (O(1)): an empty
        prompt is refused naming ``param``."""
        param = param or prompt_param(prompt)
        real_ids = prompt.token_ids
        if prompt.is_token_ids is not None:
            real_ids = [t for t, m in zip(prompt.token_ids, prompt.is_token_ids, strict=True) if m]
        check_token_ids(real_ids, self.vocab_size, param="prompt", allow_empty=True)
        check_not_empty(prompt.num_tokens, param=param)
        try:
            prompt.validate()
        except ValueError as exc:
            raise InvalidRequestError(str(exc), code="invalid_prompt", param=param) from None
        if prompt.prompt_embeds is not None:
            self._check_embeds(prompt.prompt_embeds)
        prompt.is_checked = True
        return prompt

    def _check_embeds(self, embeds: torch.Tensor) -> None:
        if not self.enable_prompt_embeds:
            raise embeds_disabled_error()
        if embeds.dim() != 2 or embeds.shape[1] != self.hidden_size:
            raise PromptEmbedsError(
                f"`prompt_embeds` hidden_size {embeds.shape[-1]} does not match the model's "
                f"hidden_size {self.hidden_size}.",
                code="hidden_size_mismatch",
            )
        if embeds.dtype != self.dtype:
            raise PEValidationError(
                f"`prompt_embeds` must be in the model dtype {self.dtype}.",
                code="unsupported_dtype",
                param="prompt_embeds",
            )


def prompt_param(prompt: Prompt) -> str:
    """The request field a whole-prompt error names."""
    return "prompt_embeds" if prompt.prompt_embeds is not None else "prompt"
