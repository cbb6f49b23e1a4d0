"""POST /v1/completions: text, token-id and prompt-embeds prompts (embeds first in choices)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pe_common.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    decode_completion_request,
)
from pe_server.errors import APIError
from pe_server.logprobs import completion_logprobs, wire_prompt_logprobs
from pe_server.routes.generation_job import GenerationJob, prompt_token_ids, run_job
from pe_server.routes.intake import Intake
from pe_server.routes.streaming import PendingChunk
from pe_server.routes.usage import make_usage
from pe_server.sampling import build_sampling_params
from pe_server.state import GENERATION, ServerState
from pe_server.structured import constrain, request_constraint

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pe_engine.outputs import CompletionOutput, Logprob, RequestOutput
    from pe_engine.prompt import Prompt

routes = web.RouteTableDef()


@dataclass(kw_only=True)
class CompletionJob(GenerationJob):
    """A validated completions request, ready to run."""

    chunk_type = CompletionStreamResponse

    req: CompletionRequest

    def choice_index(self, prompt_index: int, branch: int) -> int:
        return prompt_index * self.params.n + branch

    def response(self, finals: list[RequestOutput], tokenizer: Any) -> CompletionResponse:
        choices = []
        for i, (prompt, final) in enumerate(zip(self.prompts, finals, strict=True)):
            for out in final.outputs:
                choices.append(make_choice(self, i, prompt, final, out, tokenizer))
        choices.sort(key=lambda c: c.index)
        return CompletionResponse(
            id=self.response_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=make_usage(finals),
        )

    def chunk_stream(self, tokenizer: Any) -> CompletionChunks:
        return CompletionChunks(self, tokenizer)


@routes.post("/v1/completions")
@GENERATION
async def create_completion(request: web.Request) -> web.StreamResponse:
    return await run_job(request, decode_completion_request, prepare)


async def prepare(intake: Intake[CompletionRequest], request_id: str) -> CompletionJob:
    state, req, model, builder = intake.state, intake.req, intake.model, intake.builder
    embeds = list(req.prompt_embeds or [])
    builder.check_embeds_allowed(len(embeds))
    texts = list(req.prompt or [])
    check_unsupported(req, state, has_embeds=bool(embeds))
    max_tokens = req.max_tokens  # None: up to the context length, as in vLLM
    params = build_sampling_params(
        req, max_tokens=max_tokens, logprobs=req.logprobs, prompt_logprobs=prompt_logprobs(req)
    )
    params = await constrain(
        state, params, request_constraint(req, state.config.structured_outputs_config)
    )
    builder.precheck_embeds(embeds, max_tokens)
    tensors = await builder.decode_embeds(embeds)
    text_prompts = await builder.text_prompts(texts, req.add_special_tokens)
    prompts = await builder.embeds_prompts(tensors) + text_prompts
    return CompletionJob(
        req=req,
        model=model,
        response_id=f"cmpl-{request_id}",
        prompts=prompts,
        params=params,
    )


def check_unsupported(req: CompletionRequest, state: ServerState, *, has_embeds: bool) -> None:
    """vLLM's refusals for embeds and streams, and what the backend does not do."""
    if has_embeds and req.suffix is not None:
        raise APIError.bad_request(
            "suffix is not supported with prompt_embeds", code="unsupported", param="suffix"
        )
    if has_embeds and req.echo:
        raise APIError.bad_request("Echo is unsupported with prompt embeds.", code="unsupported")
    if has_embeds and req.prompt_logprobs is not None:
        raise APIError.bad_request(
            "prompt_logprobs is not compatible with prompt embeds.", code="unsupported"
        )
    if req.suffix is not None:
        raise APIError.bad_request(
            "suffix is not currently supported", code="unsupported", param="suffix"
        )
    if req.stream and req.prompt_logprobs is not None:
        raise APIError.bad_request(
            "`prompt_logprobs` are not available when `stream=True`.",
            code="invalid_parameter",
            param="prompt_logprobs",
        )
    backend = state.backend
    if prompt_logprobs(req) is not None and not backend.supports_prompt_logprobs:
        raise APIError.bad_request(
            f"prompt_logprobs (and echo with logprobs) are not supported by the {backend.name} "
            "backend.",
            code="unsupported",
            param="prompt_logprobs" if req.prompt_logprobs is not None else "echo",
        )
    if req.best_of is not None and req.best_of > req.n:
        if req.stream:
            raise APIError.bad_request(
                "best_of > n cannot be streamed: the best choices are known only at the end.",
                code="invalid_parameter",
                param="best_of",
            )
        if not backend.supports_best_of:
            raise APIError.bad_request(
                f"best_of > n is not supported by the {backend.name} backend.",
                code="unsupported_parameter",
                param="best_of",
            )


def prompt_logprobs(req: CompletionRequest) -> int | None:
    """Top entries per prompt position the engine computes: ``prompt_logprobs``, else
    ``logprobs`` when echoing (the echoed prompt tokens carry logprobs, as in vLLM)."""
    if req.prompt_logprobs is not None:
        return req.prompt_logprobs
    if req.echo and req.logprobs is not None:
        return req.logprobs
    return None


def echo_text(job: CompletionJob, prompt: Prompt, tokenizer: Any) -> str:
    if not job.req.echo:
        return ""
    if prompt.text is not None:
        return prompt.text
    return str(tokenizer.decode(prompt.token_ids))


def make_choice(
    job: CompletionJob,
    prompt_index: int,
    prompt: Prompt,
    final: RequestOutput,
    out: CompletionOutput,
    tokenizer: Any,
) -> CompletionChoice:
    prefix = echo_text(job, prompt, tokenizer)
    return CompletionChoice(
        index=job.choice_index(prompt_index, out.index),
        text=prefix + out.text,
        logprobs=choice_logprobs(
            job,
            prompt,
            out.token_ids,
            out.logprobs,
            tokenizer,
            with_prompt=True,
            prompt_steps=final.prompt_logprobs,
        ),
        finish_reason=out.finish_reason,
        stop_reason=out.stop_reason,
        token_ids=list(out.token_ids) if job.req.return_token_ids else None,
        prompt_token_ids=prompt_token_ids(prompt) if job.req.return_token_ids else None,
        prompt_logprobs=wire_prompt_logprobs(final)
        if job.req.prompt_logprobs is not None
        else None,
    )


def choice_logprobs(
    job: CompletionJob,
    prompt: Prompt,
    token_ids: Sequence[int],
    steps: Sequence[dict[int, Logprob]] | None,
    tokenizer: Any,
    num_chars: int = 0,
    *,
    with_prompt: bool = False,
    prompt_steps: Sequence[dict[int, Logprob] | None] | None = None,
) -> CompletionLogprobs | None:
    """The choice's ``logprobs`` for ``token_ids`` (generated after ``num_chars`` characters).
    Echoing, in the choice's first chunk or whole answer (``with_prompt``), the prompt's tokens
    come first with ``prompt_steps``, the first one without logprobs (vLLM's layout; offsets
    then count from the start of the prompt)."""
    if job.params.logprobs is None or steps is None:
        return None
    if not (job.req.echo and with_prompt):
        prefix = echo_text(job, prompt, tokenizer)
        return completion_logprobs(
            token_ids, steps, job.params.logprobs, tokenizer, len(prefix) + num_chars
        )
    prompt_steps = prompt_steps or [None] * prompt.num_tokens
    return completion_logprobs(
        [*prompt.token_ids, *token_ids], [*prompt_steps, *steps], job.params.logprobs, tokenizer
    )


class CompletionChunks:
    """The chunks of a streamed completion, one per delta of a branch with something to show."""

    def __init__(self, job: CompletionJob, tokenizer: Any) -> None:
        self.job = job
        self.tokenizer = tokenizer
        self.branches: dict[tuple[int, int], PendingChunk] = {}
        # Each prompt's prompt logprobs (its first delta has them), echoed in first chunks.
        self.prompt_steps: dict[int, list[dict[int, Logprob] | None] | None] = {}

    def add(
        self, prompt_index: int, output: RequestOutput, out: CompletionOutput
    ) -> list[CompletionStreamResponse]:
        """Take one branch's delta; the chunk to send now, if something shows."""
        if self.prompt_steps.get(prompt_index) is None:
            self.prompt_steps[prompt_index] = output.prompt_logprobs
        pending = self.branches.setdefault((prompt_index, out.index), PendingChunk())
        if pending.is_done:
            return []
        pending.add(out)
        wants_ids = self.job.req.return_token_ids
        if not pending.text and not pending.is_finished and not (pending.token_ids and wants_ids):
            return []
        return [self._chunk(prompt_index, out.index, pending)]

    def _chunk(
        self, prompt_index: int, branch: int, pending: PendingChunk
    ) -> CompletionStreamResponse:
        job = self.job
        prompt = job.prompts[prompt_index]
        is_first = not pending.is_started
        num_chars = pending.num_chars
        text, new_ids, steps = pending.take()
        prefix = echo_text(job, prompt, self.tokenizer) if is_first else ""
        logprobs = choice_logprobs(
            job, prompt, new_ids, steps, self.tokenizer, num_chars,
            with_prompt=is_first, prompt_steps=self.prompt_steps.get(prompt_index),
        )  # fmt: skip
        choice = CompletionChoice(
            index=job.choice_index(prompt_index, branch),
            text=prefix + text,
            logprobs=logprobs,
            finish_reason=pending.finish_reason,
            stop_reason=pending.stop_reason,
            token_ids=new_ids if job.req.return_token_ids else None,
            prompt_token_ids=prompt_token_ids(prompt)
            if job.req.return_token_ids and is_first
            else None,
        )
        return job.chunk([choice])
