"""Request -> engine prompts: embeds checks from declared sizes, decoding in a thread pool,
text and token prompts, the chat template, and the context-length check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from pe_common.codec import EmbedsLimits, decode_prompt_embeds
from pe_common.codec.limits import ITEMSIZE, SUPPORTED_DTYPES
from pe_common.codec.tensor_view import MAX_DIM
from pe_common.errors import PEValidationError
from pe_common.protocol import EmbedsRef, encode_json
from pe_server.errors import APIError
from pe_server.state import ServerState

if TYPE_CHECKING:
    import torch
    from aiohttp import web

    from pe_engine.inputs.prompt_builder import PromptBuilder as EnginePromptBuilder
    from pe_engine.prompt import Prompt

T = TypeVar("T")
EMBEDS_PARAM = "prompt_embeds"
# A request's own chat template (on a trusting server) and its template kwargs stay small.
MAX_REQUEST_TEMPLATE_CHARS = 256 * 1024
MAX_TEMPLATE_KWARGS_BYTES = 64 * 1024


def context_error(max_model_len: int, num_prompt: int, max_tokens: int | None) -> APIError | None:
    """vLLM's wording for a prompt (plus requested output) longer than the context."""
    if num_prompt >= max_model_len:
        return APIError.bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains {num_prompt} input tokens, which exceeds this limit even without "
            "any output tokens. Please reduce the length of the input prompt.",
            code="context_length_exceeded",
            param="input_tokens",
        )
    if max_tokens is not None and num_prompt + max_tokens > max_model_len:
        return APIError.bad_request(
            f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's "
            f"maximum context length is {max_model_len} tokens and your request has "
            f"{num_prompt} input tokens ({max_tokens} > {max_model_len} - {num_prompt}).",
            code="context_length_exceeded",
            param="max_tokens",
        )
    return None


def check_context(max_model_len: int, num_prompt: int, max_tokens: int | None) -> None:
    error = context_error(max_model_len, num_prompt, max_tokens)
    if error is not None:
        raise error


def budget_exceeded(budget: int) -> APIError:
    return APIError.bad_request(
        f"The prompt embeddings of this request exceed the decode budget of {budget} bytes.",
        code="decode_budget_exceeded",
        param=EMBEDS_PARAM,
    )


def payload_bytes(payload: Any) -> int:
    """Bytes a payload will decode to at least, from its size or declared shape (no decoding)."""
    if isinstance(payload, str):
        return len(payload) * 3 // 4
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return len(payload)
    shape, dtype = declared_shape(payload), declared_field(payload, "dtype")
    if shape is None or not isinstance(dtype, str) or dtype not in SUPPORTED_DTYPES:
        return 0  # the codec rejects it with the precise reason
    total = ITEMSIZE[dtype]
    for dim in shape:
        total *= dim
    return total


def declared_field(payload: Any, name: str) -> Any:
    if isinstance(payload, Mapping):
        return payload.get(name)
    return getattr(payload, name, None)


def declared_shape(payload: Any) -> list[int] | None:
    """A raw payload's declared shape if every dim is plausible; else None (the codec refuses
    the shape itself as ``invalid_shape``, rather than a budget or context error here)."""
    shape = declared_field(payload, "shape")
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
    ):
        return None
    return list(shape)


def declared_rows(payload: Any) -> int | None:
    """Rows of a raw payload from its declared shape ([T, H] or [1, T, H])."""
    shape = declared_shape(payload)
    if shape is None or len(shape) < 2:
        return None
    return shape[-2]


@dataclass(frozen=True)
class ChatOptions:
    """How to render a chat (request fields of the same names)."""

    chat_template: str | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None

    @classmethod
    def of(cls, req: Any, tools: list[dict[str, Any]] | None = None) -> ChatOptions:
        """Every field but ``tools`` is the request's of the same name; ``tools``: what the
        template shows (the request's, unless the server leaves them out for tool_choice
        "none")."""
        same_names = {f.name: getattr(req, f.name) for f in fields(cls) if f.name != "tools"}
        return cls(**same_names, tools=tools)


class PromptBuilder:
    """Builds engine prompts for one app; CPU-heavy steps run in the decode thread pool."""

    def __init__(self, state: ServerState, request: web.Request | None = None) -> None:
        self.state = state
        self.config = state.config
        self.backend = state.backend
        self.request = request  # whose stored embeds ``{"id": ...}`` items name

    @property
    def info(self) -> Any:
        return self.backend.info

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.state.decode_pool, fn, *args)

    # ---- prompt embeds -------------------------------------------------------------------

    def check_embeds_allowed(self, num_payloads: int, *, chat: bool = False) -> None:
        """Before anything is decoded: the flag, then the count."""
        if num_payloads and not self.config.enable_prompt_embeds:
            raise APIError.embeds_disabled(chat=chat)

    def precheck_embeds(self, payloads: Sequence[Any], max_tokens: int | None) -> None:
        """Limits decided from payload sizes and declared shapes only."""
        budget = self.config.max_embeds_bytes
        if sum(payload_bytes(p) for p in payloads) > budget:
            raise budget_exceeded(budget)
        for payload in payloads:
            rows = declared_rows(payload)
            if rows is not None and rows > 0:
                check_context(self.info.max_model_len, rows, max_tokens)

    async def decode_embeds(
        self, payloads: Sequence[Any], param: str = EMBEDS_PARAM
    ) -> list[torch.Tensor]:
        """Decode every payload in the thread pool; the request's bytes stay within budget."""
        if not payloads:
            return []
        budget = self.config.max_embeds_bytes
        limits = EmbedsLimits(max_bytes=budget)
        stored = {i: self._stored(p) for i, p in enumerate(payloads) if isinstance(p, EmbedsRef)}
        inline = [p for p in payloads if not isinstance(p, EmbedsRef)]
        start = time.perf_counter()
        decoded = await asyncio.gather(
            *(self.run(self._decode_one, p, limits, param) for p in inline)
        )
        if inline:
            self.state.metrics.embeds_decode.observe(time.perf_counter() - start)
            self.state.metrics.embeds_bytes.inc(sum(t.nbytes for t in decoded))
        remaining = iter(decoded)
        tensors = [stored[i] if i in stored else next(remaining) for i in range(len(payloads))]
        if sum(t.nbytes for t in tensors) > budget:  # rows the engine will hold, stored or not
            raise budget_exceeded(budget)
        return tensors

    def _stored(self, ref: EmbedsRef) -> torch.Tensor:
        """A stored object's tensor (pinned for the request), or a 404 naming where."""
        from pe_server.embeds import resolve

        assert self.request is not None, "stored embeds are resolved for an HTTP request"
        return resolve(self.request, ref)

    def _decode_one(self, payload: Any, limits: EmbedsLimits, param: str) -> torch.Tensor:
        return decode_prompt_embeds(
            payload,
            hidden_size=self.info.hidden_size,
            dtype=self.info.dtype,
            limits=limits,
            param=param,
        )

    # ---- completions prompts -------------------------------------------------------------

    async def embeds_prompts(self, tensors: Sequence[torch.Tensor]) -> list[Prompt]:
        if not tensors:
            return []
        return await self.run(self._embeds_prompts, list(tensors))

    def _embeds_prompts(self, tensors: list[torch.Tensor]) -> list[Prompt]:
        from pe_engine.inputs.prompt_builder import build_embeds_prompt

        checker = self.checker()
        return [checker.check_contents(build_embeds_prompt(t)) for t in tensors]

    async def text_prompts(
        self, prompts: Sequence[str | Sequence[int]], add_special_tokens: bool = True
    ) -> list[Prompt]:
        return await self.run(self._text_prompts, list(prompts), add_special_tokens)

    def _text_prompts(
        self, prompts: list[str | Sequence[int]], add_special_tokens: bool
    ) -> list[Prompt]:
        from pe_engine.inputs.prompt_builder import build_text_prompt, build_token_prompt

        tokenizer = self.backend.tokenizer
        built = [
            build_text_prompt(tokenizer, p, add_special_tokens=add_special_tokens)
            if isinstance(p, str)
            else build_token_prompt(p)
            for p in prompts
        ]
        checker = self.checker()
        return [checker.check_contents(p, param="prompt") for p in built]

    def check_token_ids(self, ids: Sequence[int], param: str = "prompt") -> None:
        """The engine's token-id rule (an empty list is the caller's to refuse)."""
        from pe_engine.inputs.prompt_builder import check_token_ids

        check_token_ids(ids, self.info.vocab_size, param=param, allow_empty=True)

    def checker(self) -> EnginePromptBuilder:
        """The engine's prompt rules for the served model: a prompt they passed (in the pools)
        is marked checked, and the engine does not read it again."""
        from pe_engine.inputs.prompt_builder import PromptBuilder as EnginePromptBuilder

        info = self.info
        return EnginePromptBuilder(
            tokenizer=self.backend.tokenizer,
            hidden_size=info.hidden_size,
            dtype=info.dtype,
            vocab_size=info.vocab_size,
            max_model_len=info.max_model_len,
            enable_prompt_embeds=self.config.enable_prompt_embeds,
        )

    # ---- chat ----------------------------------------------------------------------------

    def check_chat_options(self, options: ChatOptions) -> None:
        """Before anything is decoded or rendered: who may send a template, and sizes."""
        if options.chat_template is not None:
            if not self.config.trust_request_chat_template:
                raise APIError.bad_request(
                    "Chat template is passed with request, but --trust-request-chat-template is "
                    "not set. Refused request with untrusted chat template.",
                    code="untrusted_chat_template",
                    param="chat_template",
                )
            if len(options.chat_template) > MAX_REQUEST_TEMPLATE_CHARS:
                raise APIError.bad_request(
                    f"chat_template may hold at most {MAX_REQUEST_TEMPLATE_CHARS} characters.",
                    code="invalid_parameter",
                    param="chat_template",
                )
        kwargs = options.chat_template_kwargs
        if kwargs and len(encode_json(kwargs)) > MAX_TEMPLATE_KWARGS_BYTES:
            raise APIError.bad_request(
                f"chat_template_kwargs may hold at most {MAX_TEMPLATE_KWARGS_BYTES} bytes of JSON.",
                code="invalid_parameter",
                param="chat_template_kwargs",
            )

    async def chat_prompt(self, messages: list[dict[str, Any]], options: ChatOptions) -> Prompt:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.state.render_threads, self._chat_prompt, messages, options
        )

    def _chat_prompt(self, messages: list[dict[str, Any]], options: ChatOptions) -> Prompt:
        import jinja2

        from pe_engine.inputs.chat_render import ChatRenderBusyError

        try:
            prompt = self.backend.chat_builder.build(
                messages,
                chat_template=options.chat_template or self.config.chat_template,
                add_generation_prompt=options.add_generation_prompt,
                continue_final_message=options.continue_final_message,
                chat_template_kwargs=options.chat_template_kwargs,
                tools=options.tools,
                content_format=self.config.chat_template_content_format,
                renderer=self.state.chat_renderer,
            )
        except PEValidationError:
            raise
        except ChatRenderBusyError:
            raise APIError.overloaded(self.config.retry_after, code="chat_render_busy") from None
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError):
            raise APIError.bad_request(
                "The chat template could not be applied to these messages.",
                code="invalid_chat_template",
                param="messages",
            ) from None
        return self.checker().check_contents(prompt, param="messages")
