"""The offline API, shaped like vLLM's ``LLM``."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch

from pe_common.codec import EmbedsLimits, decode_prompt_embeds, validate_prompt_embeds_tensor
from pe_common.protocol.validation import check_cache_salt
from pe_engine.config import EngineConfig
from pe_engine.core.llm_engine import LLMEngine
from pe_engine.inputs.chat import ChatPromptBuilder
from pe_engine.inputs.embeds_store import EmbedsLease, EmbedsStore, StoredEmbeds
from pe_engine.inputs.prompt_builder import embeds_disabled_error
from pe_engine.outputs import OutputAccumulator, RequestOutput
from pe_engine.prompt import Prompt
from pe_engine.sampling_params import SamplingParams

PromptInput = str | Mapping[str, Any] | Prompt
Message = dict[str, Any]


class LLM:
    """Generate from text, token ids, prompt embeddings or a mix of them, in one process.

    ``LLM(model="path/to/hf_dir" | "demo", enable_prompt_embeds=True, dtype="float32", ...)``
    takes any :class:`EngineConfig` field as a keyword.

    Embeddings used by many prompts (a document across the turns of a chat) can be stored once
    with :meth:`create_embeds`; the handle it returns is taken wherever a tensor is, without
    checking or copying the rows again. ``embeds_store`` (default: a 1 GiB store whose objects
    expire an hour after their last use) holds them; pass one to size it.
    """

    def __init__(
        self, model: str, *, embeds_store: EmbedsStore | None = None, **kwargs: Any
    ) -> None:
        from pe_engine.demo_model import resolve_model

        self.config = EngineConfig(model=str(resolve_model(model)), **kwargs)
        self.embeds_store = EmbedsStore() if embeds_store is None else embeds_store
        self.engine = LLMEngine(self.config)
        self.chat_builder = ChatPromptBuilder(
            self.engine.tokenizer, enable_prompt_embeds=self.config.enable_prompt_embeds
        )
        self._request_counter = itertools.count()

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def create_embeds(self, prompt_embeds: torch.Tensor) -> StoredEmbeds:
        """Check and store ``prompt_embeds`` once, exactly as a ``{"prompt_embeds": tensor}``
        prompt's would be checked and cast (the stored copy is in the model dtype); the object
        returned, or ``{"id": obj.id}``, is accepted wherever a tensor is, until it is deleted
        (``llm.embeds_store.delete(obj.id)``) or expires. A prompt naming a missing object
        raises :class:`~pe_common.errors.InvalidRequestError` (code ``embeds_not_found``)."""
        return self.embeds_store.put(self.engine.prompt_builder.validate_embeds(prompt_embeds))

    def generate(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in the order of the inputs.

        A prompt is a str, ``{"prompt": str}``, ``{"prompt_token_ids": [...]}``,
        ``{"prompt_embeds": tensor}`` ((N, H) or (1, N, H), any float dtype, any device) or a mixed
        ``{"prompt_token_ids", "prompt_embeds", "is_token_ids" | "prompt_is_token_ids"}``; a
        handle from :meth:`create_embeds` may stand for the tensor. Any dict may carry vLLM's
        ``"cache_salt"``: only prompts with the same salt share cached prefix blocks.
        """
        if isinstance(prompts, (str, Mapping, Prompt)):
            prompts = [prompts]
        lease = EmbedsLease(self.embeds_store)
        try:
            built = [self._build(p, lease) for p in prompts]
            return self._run(built, sampling_params, use_tqdm)
        finally:
            lease.release()

    def _build(self, prompt: PromptInput, lease: EmbedsLease) -> Prompt:
        if isinstance(prompt, Mapping) and self.config.enable_prompt_embeds:
            prompt = lease.resolve_prompt(prompt)
        built = self.engine.prompt_builder.build(prompt)
        if isinstance(prompt, Mapping) and prompt.get("cache_salt") is not None:
            check_cache_salt(prompt["cache_salt"])
            built.cache_salt = prompt["cache_salt"]
        return built

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Apply the chat template to one conversation or a list of them and generate.

        Content parts may be ``{"type": "prompt_embeds", "data": tensor | base64 str | handle}``
        (a handle from :meth:`create_embeds`), or pe's ``{"type": "prompt_embeds", "id": id}``.
        """
        conversations: list[list[Message]]
        if messages and isinstance(messages[0], list):
            conversations = messages
        else:
            conversations = [cast("list[Message]", messages)]
        lease = EmbedsLease(self.embeds_store)
        try:
            built = []
            for conversation in conversations:
                prompt = self.chat_builder.build(
                    [self._decode_parts(m, i, lease) for i, m in enumerate(conversation)],
                    chat_template=chat_template,
                    add_generation_prompt=add_generation_prompt,
                    continue_final_message=continue_final_message,
                    chat_template_kwargs=chat_template_kwargs,
                )
                built.append(self.engine.prompt_builder.validate(prompt))
            return self._run(built, sampling_params, use_tqdm)
        finally:
            lease.release()

    def _decode_parts(self, message: Message, index: int, lease: EmbedsLease) -> Message:
        content = message.get("content")
        if not isinstance(content, list):
            return message
        where = f"messages[{index}].content"
        parts = [self._decode_part(p, f"{where}[{j}]", lease) for j, p in enumerate(content)]
        return {**message, "content": parts}

    def _decode_part(self, part: Any, param: str, lease: EmbedsLease) -> Any:
        if not isinstance(part, Mapping) or part.get("type") != "prompt_embeds":
            return part
        if not self.config.enable_prompt_embeds:
            raise embeds_disabled_error(period=False)
        stored = lease.resolve_part(part, param)
        if stored is not None:
            return stored
        data = part.get("data")
        limits = EmbedsLimits(max_bytes=self.config.max_embeds_bytes)
        model = {"hidden_size": self.engine.hidden_size, "dtype": self.engine.dtype}
        if isinstance(data, torch.Tensor):
            tensor = validate_prompt_embeds_tensor(data, limits=limits, **model)
        else:
            payload = data if isinstance(data, (str, bytes)) else part
            tensor = decode_prompt_embeds(payload, limits=limits, **model)
        return {"type": "prompt_embeds", "data": tensor}

    def _run(
        self,
        prompts: list[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None,
        use_tqdm: bool,
    ) -> list[RequestOutput]:
        params = _params_per_prompt(sampling_params, len(prompts))
        request_ids = [str(next(self._request_counter)) for _ in prompts]
        try:
            for request_id, prompt, p in zip(request_ids, prompts, params, strict=True):
                self.engine.add_request(request_id, prompt, p)
            finals = self._run_engine(len(prompts), use_tqdm)
        except BaseException:
            for request_id in request_ids:
                self.engine.abort_request(request_id)
            raise
        return [finals[request_id] for request_id in request_ids]

    def _run_engine(self, num_requests: int, use_tqdm: bool) -> dict[str, RequestOutput]:
        from tqdm.auto import tqdm

        totals: dict[str, OutputAccumulator] = {}
        finals: dict[str, RequestOutput] = {}
        with tqdm(total=num_requests, desc="Processed prompts", disable=not use_tqdm) as bar:
            while self.engine.has_unfinished_requests():
                for delta in self.engine.step():
                    total = totals.setdefault(delta.request_id, OutputAccumulator())
                    total.add(delta)
                    if delta.finished:
                        finals[delta.request_id] = totals.pop(delta.request_id).result()
                        bar.update(1)
        return finals


def _params_per_prompt(
    sampling_params: SamplingParams | Sequence[SamplingParams] | None, num_prompts: int
) -> list[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams() for _ in range(num_prompts)]
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * num_prompts
    params = list(sampling_params)
    if len(params) != num_prompts:
        raise ValueError(
            f"got {len(params)} sampling params for {num_prompts} prompts; pass one or one each"
        )
    return params
