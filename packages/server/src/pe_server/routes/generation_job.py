"""What completions and chat share once a request is validated: run its prompts, then answer
with the whole response or stream its chunks. A route only builds the job and its wire objects."""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from pe_common.protocol import encode_json
from pe_common.protocol.common import GenerateFields
from pe_server.cache_salt import salt_prompts
from pe_server.generation import Generation
from pe_server.negotiation import struct_response
from pe_server.request_builder import check_context
from pe_server.routes.intake import Intake, take_in
from pe_server.routes.streaming import StreamSession
from pe_server.routes.usage import make_usage
from pe_server.state import REQUEST_ID

if TYPE_CHECKING:
    from aiohttp import web

    from pe_common.protocol import Usage
    from pe_common.protocol.common import ChoicesResponse
    from pe_engine.outputs import CompletionOutput, RequestOutput
    from pe_engine.prompt import Prompt
    from pe_engine.sampling_params import SamplingParams
    from pe_server.state import ServerState

Req = TypeVar("Req", bound=GenerateFields)


class ChunkStream(Protocol):
    """The chunks of one streamed answer, made from the deltas as they arrive."""

    def add(
        self, prompt_index: int, output: RequestOutput, out: CompletionOutput
    ) -> list[ChoicesResponse[Any]]:
        """The chunks to send for one branch's delta; none while nothing shows yet."""
        ...


@dataclass(kw_only=True)
class GenerationJob(ABC):
    """A validated generation request, ready to run: its prompts with their sampling params,
    and the names its answer reports. Subclasses say how the answer and its chunks look."""

    chunk_type: ClassVar[type[ChoicesResponse[Any]]]  # the route's stream chunk

    req: GenerateFields
    model: str  # the served name to report
    response_id: str
    prompts: list[Prompt]
    params: SamplingParams  # every prompt's; max_tokens None: up to the context length
    created: int = field(default_factory=lambda: int(time.time()))

    @abstractmethod
    def response(self, finals: list[RequestOutput], tokenizer: Any) -> ChoicesResponse[Any]:
        """The whole answer, from every prompt's final output (in prompt order)."""

    @abstractmethod
    def chunk_stream(self, tokenizer: Any) -> ChunkStream:
        """A fresh maker of this job's stream chunks."""

    def chunk(self, choices: list[Any], usage: Usage | None = None) -> ChoicesResponse[Any]:
        return self.chunk_type(
            id=self.response_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
        )


def prompt_token_ids(prompt: Prompt) -> list[int] | None:
    """The prompt's ids; None for a pure-embeds prompt (it has none)."""
    if prompt.is_pure_embeds:
        return None
    return list(prompt.token_ids)


def fit_to_context(
    max_model_len: int, prompts: list[Prompt], params: SamplingParams
) -> list[SamplingParams]:
    """Each prompt's params once the prompt is known to fit the context; without max_tokens
    a prompt may generate up to the context length, as in vLLM."""
    fitted = []
    for prompt in prompts:
        check_context(max_model_len, prompt.num_tokens, params.max_tokens)
        if params.max_tokens is None:
            limit = max_model_len - prompt.num_tokens
            fitted.append(dataclasses.replace(params, max_tokens=limit))
        else:
            fitted.append(params)
    return fitted


async def run_job(
    request: web.Request,
    decode: Callable[..., Req],
    prepare: Callable[[Intake[Req], str], Awaitable[GenerationJob]],
) -> web.StreamResponse:
    """Take the request in, let the route ``prepare`` its job (from the intake and the
    request's id), run the job's prompts (aborting them if the handler leaves early) and
    answer: the whole response, or its stream."""
    intake = await take_in(request, decode)
    state = intake.state
    job = await prepare(intake, request[REQUEST_ID])
    prompt_params = fit_to_context(state.backend.info.max_model_len, job.prompts, job.params)
    salt_prompts(request, job.req.cache_salt, job.prompts)
    if job.req.stream:
        return await stream_job(request, state, job, prompt_params)
    async with Generation(
        state.backend, state.metrics, job.response_id, job.prompts, prompt_params
    ) as gen:
        finals = await gen.final_outputs()
    return struct_response(request, job.response(finals, state.backend.tokenizer))


async def stream_job(
    request: web.Request,
    state: ServerState,
    job: GenerationJob,
    prompt_params: list[SamplingParams],
) -> web.StreamResponse:
    """The job's chunks as SSE events, then (if asked for) a last chunk with the usage."""
    session = StreamSession(request, state)
    stream_options = job.req.stream_options
    include_usage = bool(stream_options and stream_options.include_usage)
    chunks = job.chunk_stream(state.backend.tokenizer)
    async with session.generation(job.response_id, job.prompts, prompt_params) as gen:
        async for i, output in session.outputs(gen):
            for out in output.outputs:
                for chunk in chunks.add(i, output, out):
                    await session.send(encode_json(chunk))
        if session.is_ok and include_usage:
            await session.send(encode_json(job.chunk([], usage=make_usage(gen.totals()))))
    return await session.finish()
