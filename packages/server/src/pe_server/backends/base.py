"""The Backend protocol: what the HTTP layer needs from an inference engine."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from pe_engine.outputs import RequestOutput
    from pe_engine.prompt import Prompt
    from pe_engine.sampling_params import SamplingParams
    from pe_server.config import ServerConfig
    from pe_server.structured import Constraint


class EngineDeadError(RuntimeError):
    """The backend can no longer serve requests (its engine failed)."""


@dataclass(frozen=True)
class ModelInfo:
    """What request validation needs to know about the served model."""

    hidden_size: int
    max_model_len: int
    dtype: torch.dtype
    vocab_size: int


@dataclass(frozen=True)
class BackendStats:
    """A snapshot of the backend's load, read by /metrics."""

    num_running: int = 0
    num_waiting: int = 0
    num_free_blocks: int = 0
    num_total_blocks: int = 0
    prefix_cache_hits: int = 0
    prefix_cache_queries: int = 0


@runtime_checkable
class Backend(Protocol):
    """An inference engine behind the OpenAI routes.

    Lifecycle: ``await start()`` once (loads the model; may take long), then any number of
    concurrent ``generate`` calls from the event loop, then ``await shutdown()``.

    ``generate(prompt, params, request_id)`` is an async iterator of *delta* ``RequestOutput``
    objects (``kind=RequestOutputKind.DELTA``), as pe-engine emits them: each lists the
    branches (of ``params.n``) not finished before it, with only the text, token ids and
    logprobs new since the previous output (possibly none) and the running
    ``cumulative_logprob``; a branch's last delta has its ``finish_reason`` and
    ``stop_reason``; ``prompt_logprobs`` comes with the first output only; the last output has
    ``finished=True``. With ``best_of > n`` one output comes, at the end, holding the chosen
    branches' totals. ``pe_engine.outputs.OutputAccumulator`` folds them into totals. Nothing
    per output may grow with the output so far. Embeds rows count as prompt tokens
    (``num_prompt_tokens``). If the consumer stops iterating early (client gone),
    the caller calls ``abort(request_id)``, which must free the request's resources promptly
    and be harmless for unknown or finished ids. A backend whose engine died raises
    :class:`EngineDeadError` from ``generate`` (in flight and new) and reports
    ``is_healthy == False``.

    ``tokenizer`` is a Hugging Face tokenizer; ``chat_builder.build(messages, ...)`` renders a
    chat (content parts ``{"type": "text"}`` / ``{"type": "prompt_embeds", "data": tensor}``)
    into a ``Prompt``. ``info`` has the sizes used to validate requests before decoding.
    """

    name: str
    info: ModelInfo
    tokenizer: Any
    chat_builder: Any
    supports_prompt_logprobs: bool  # prompt_logprobs, and echo with logprobs
    supports_best_of: bool  # best_of > n

    @property
    def is_healthy(self) -> bool: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    def generate(
        self, prompt: Prompt, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]: ...

    async def abort(self, request_id: str) -> None: ...

    async def compile_constraint(self, constraint: Constraint) -> None: ...

    def stats(self) -> BackendStats: ...


class ModelBackend:
    """What every backend holds from construction: its config, and the tokenizer, chat
    builder and model sizes that ``start`` fills in once the model is loaded."""

    def __init__(self, config: ServerConfig) -> None:
        import torch

        self._config = config
        self.tokenizer: Any = None
        self.chat_builder: Any = None
        self.info = ModelInfo(hidden_size=0, max_model_len=0, dtype=torch.float32, vocab_size=0)

    async def compile_constraint(self, constraint: Constraint) -> None:
        """Check a request's constraint before it is submitted. The vLLM backends pass it
        through: vLLM compiles and validates it."""
