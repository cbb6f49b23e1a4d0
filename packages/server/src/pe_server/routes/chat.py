"""POST /v1/chat/completions: text and prompt_embeds content parts in any role and position."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pe_common import protocol as wire
from pe_server.errors import APIError
from pe_server.logprobs import chat_logprobs, wire_prompt_logprobs
from pe_server.request_builder import ChatOptions
from pe_server.routes.chat_messages import ChatInput, collect_chat_input
from pe_server.routes.chat_tools import Streamer, ToolPlan, merge, wire_delta
from pe_server.routes.generation_job import GenerationJob, prompt_token_ids, run_job
from pe_server.routes.intake import Intake
from pe_server.routes.streaming import PendingChunk
from pe_server.routes.usage import make_usage
from pe_server.sampling import build_sampling_params
from pe_server.state import GENERATION, ServerState
from pe_server.structured import constrain, request_constraint

if TYPE_CHECKING:
    from pe_engine.outputs import CompletionOutput, RequestOutput

routes = web.RouteTableDef()


@dataclass(kw_only=True)
class ChatJob(GenerationJob):
    """A validated chat request (one prompt), ready to run."""

    chunk_type = wire.ChatCompletionStreamResponse

    req: wire.ChatCompletionRequest
    tools: ToolPlan = field(default_factory=lambda: ToolPlan("none"))

    def response(self, finals: list[RequestOutput], tokenizer: Any) -> wire.ChatCompletionResponse:
        (final,) = finals
        return wire.ChatCompletionResponse(
            id=self.response_id,
            created=self.created,
            model=self.model,
            choices=[self._choice(out, tokenizer) for out in final.outputs],
            usage=make_usage(finals),
            prompt_token_ids=prompt_token_ids(self.prompts[0])
            if self.req.return_token_ids
            else None,
            prompt_logprobs=wire_prompt_logprobs(final)
            if self.req.prompt_logprobs is not None
            else None,
        )

    def _choice(self, out: CompletionOutput, tokenizer: Any) -> wire.ChatCompletionChoice:
        logprobs = None
        if self.params.logprobs is not None and out.logprobs is not None:
            logprobs = chat_logprobs(out.token_ids, out.logprobs, self.params.logprobs, tokenizer)
        content, calls = self.tools.extract(out.text)
        return wire.ChatCompletionChoice(
            index=out.index,
            message=wire.ChatCompletionMessage(content=content, tool_calls=calls),
            logprobs=logprobs,
            finish_reason=self.tools.finish_reason(out.finish_reason, bool(calls)),
            stop_reason=out.stop_reason,
            token_ids=list(out.token_ids) if self.req.return_token_ids else None,
        )

    def chunk_stream(self, tokenizer: Any) -> ChatChunks:
        return ChatChunks(self, tokenizer)


@routes.post("/v1/chat/completions")
@GENERATION
async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    return await run_job(request, wire.decode_chat_request, prepare)


def requested_logprobs(req: wire.ChatCompletionRequest) -> int | None:
    return (req.top_logprobs or 0) if req.logprobs else None


async def prepare(intake: Intake[wire.ChatCompletionRequest], request_id: str) -> ChatJob:
    state, req, model, builder = intake.state, intake.req, intake.model, intake.builder
    tools = ToolPlan.of(req, state.config)
    options = ChatOptions.of(req, tools.tools)
    builder.check_chat_options(options)
    chat: ChatInput = collect_chat_input(req.messages)
    builder.check_embeds_allowed(len(chat.payloads), chat=True)
    if state.config.enable_prompt_embeds:
        chat.check_reserved_text()
    if req.echo:
        raise APIError.bad_request(
            "echo is not supported for chat completions.", code="unsupported", param="echo"
        )
    check_prompt_logprobs(state, req)
    max_tokens = req.effective_max_tokens
    logprobs = requested_logprobs(req)
    params = build_sampling_params(
        req, max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=req.prompt_logprobs
    )
    params = await constrain(state, params, chat_constraint(state, req, tools))
    if not tools.skips_special_tokens:
        params = dataclasses.replace(params, skip_special_tokens=False)
    builder.precheck_embeds(chat.payloads, max_tokens)
    tensors = await builder.decode_embeds(chat.payloads)
    prompt = await builder.chat_prompt(chat.messages(tensors), options)
    return ChatJob(
        req=req,
        model=model,
        response_id=f"chatcmpl-{request_id}",
        prompts=[prompt],
        params=params,
        tools=tools,
    )


def chat_constraint(state: ServerState, req: wire.ChatCompletionRequest, tools: ToolPlan) -> Any:
    """The request's own constraint or the one its tool_choice forces; not both."""
    own = request_constraint(req, state.config.structured_outputs_config)
    forced = tools.constraint(state.config)
    if own is not None and forced is not None:
        raise APIError.bad_request(
            f"{own.param} cannot be combined with tool_choice "
            f'"{tools.mode}": use either structured outputs or tools, not both.',
            code="invalid_parameter",
            param="tool_choice",
        )
    return own or forced


def check_prompt_logprobs(state: ServerState, req: wire.ChatCompletionRequest) -> None:
    if req.prompt_logprobs is None:
        return
    if req.stream:
        raise APIError.bad_request(
            "`prompt_logprobs` are not available when `stream=True`.",
            code="invalid_parameter",
            param="prompt_logprobs",
        )
    if not state.backend.supports_prompt_logprobs:
        raise APIError.bad_request(
            f"prompt_logprobs is not supported by the {state.backend.name} backend.",
            code="unsupported",
            param="prompt_logprobs",
        )


@dataclass
class ChatBranch:
    """One choice's stream: its pending text and, with tools, its call streamer."""

    pending: PendingChunk
    streamer: Streamer | None
    called: bool = False

    def delta(self, job: ChatJob, text: str) -> wire.DeltaMessage:
        """The chunk delta of the new text (content and call pieces)."""
        if self.streamer is None:
            return wire.DeltaMessage(content=text) if text else wire.DeltaMessage()
        piece = self.streamer.stream(text)
        if self.pending.is_done:
            piece = merge(piece, self.streamer.finish())
        delta = wire_delta(piece, parallel=job.tools.parallel)
        self.called = self.called or bool(delta.tool_calls)
        return delta


class ChatChunks:
    """The chunks of a streamed chat answer: each choice's role chunk, then its content or
    call pieces with the finish reason."""

    def __init__(self, job: ChatJob, tokenizer: Any) -> None:
        self.job = job
        self.tokenizer = tokenizer
        self.branches: dict[int, ChatBranch] = {}

    def add(
        self, prompt_index: int, output: RequestOutput, out: CompletionOutput
    ) -> list[wire.ChatCompletionStreamResponse]:
        """The role chunk (first time), then the new content or call pieces with the finish
        reason, if any."""
        job, chunks = self.job, []
        if out.index not in self.branches:
            self.branches[out.index] = ChatBranch(PendingChunk(), job.tools.streamer())
            role = wire.DeltaMessage(role="assistant", content="")
            chunks.append(job.chunk([wire.ChatCompletionChunkChoice(index=out.index, delta=role)]))
        branch = self.branches[out.index]
        pending = branch.pending
        if pending.is_done:
            return chunks
        pending.add(out)
        if not pending.text and not pending.is_finished:
            return chunks
        finish_reason, stop_reason = pending.finish_reason, pending.stop_reason
        text, new_ids, steps = pending.take()
        delta = branch.delta(job, text)
        logprobs = None
        if job.params.logprobs is not None and steps is not None:
            logprobs = chat_logprobs(new_ids, steps, job.params.logprobs, self.tokenizer)
        if delta == wire.DeltaMessage() and finish_reason is None and logprobs is None:
            return chunks  # held back (a possible call marker)
        choice = wire.ChatCompletionChunkChoice(
            index=out.index,
            delta=delta,
            logprobs=logprobs,
            finish_reason=job.tools.finish_reason(finish_reason, branch.called),
            stop_reason=stop_reason,
            token_ids=new_ids if job.req.return_token_ids else None,
        )
        chunks.append(job.chunk([choice]))
        return chunks
