"""Running one HTTP request's prompts through the backend, tied to the handler's lifetime."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pe_common.errors import PEValidationError
from pe_engine.outputs import OutputAccumulator
from pe_server.backends.base import Backend
from pe_server.errors import APIError, EngineRequestError
from pe_server.metrics import ServerMetrics
from pe_server.sse import SlowReaderError

if TYPE_CHECKING:
    from pe_engine.outputs import RequestOutput
    from pe_engine.prompt import Prompt
    from pe_engine.sampling_params import SamplingParams

log = logging.getLogger("pe_server")


@dataclass
class Timing:
    """Per engine request latency bookkeeping for the TTFT / TPOT / e2e histograms."""

    start: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    num_tokens: int = 0


class Generation:
    """The engine requests of one HTTP request (one per prompt), merged into one stream.

    Use as ``async with Generation(...) as gen: async for i, delta in gen.outputs(): ...``;
    every delta is also folded into its prompt's totals (:meth:`totals`: usage, and the
    whole answer of a non-streaming request).
    Leaving the block for any reason (finished, client gone, slow reader, error) aborts every
    engine request that has not finished, so its KV blocks are freed at once.
    """

    def __init__(
        self,
        backend: Backend,
        metrics: ServerMetrics,
        request_id: str,
        prompts: Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams],
    ) -> None:
        self._backend = backend
        self._metrics = metrics
        self._prompts = list(prompts)
        if isinstance(params, Sequence):
            assert len(params) == len(self._prompts)
            self._params = list(params)
        else:
            self._params = [params] * len(self._prompts)
        self.request_ids = [f"{request_id}-{i}" for i in range(len(self._prompts))]
        self._unfinished = set(self.request_ids)
        self._timing = [Timing() for _ in self._prompts]
        self._totals = [OutputAccumulator() for _ in self._prompts]
        self._queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]]
        self._queue = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Generation:
        if len(self._prompts) > 1:  # one prompt is read in place: no task, no second queue
            for i, prompt in enumerate(self._prompts):
                self._tasks.append(asyncio.create_task(self._pump(i, prompt)))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: object, tb: object
    ) -> None:
        for task in self._tasks:
            task.cancel()
        if self._unfinished:
            await asyncio.shield(self._abort_all(abort_reason(exc_type)))
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _abort_all(self, reason: str) -> None:
        for rid in sorted(self._unfinished):
            try:
                await self._backend.abort(rid)
            except Exception:  # abort must never mask the original outcome
                log.exception("abort of %s failed", rid)
            self._metrics.aborts.labels(reason).inc()
        self._unfinished.clear()

    async def _pump(self, index: int, prompt: Prompt) -> None:
        rid = self.request_ids[index]
        try:
            async for output in self._backend.generate(prompt, self._params[index], rid):
                self._observe(index, output)
                await self._queue.put((index, output))
            self._unfinished.discard(rid)
            await self._queue.put((index, None))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await self._queue.put((index, exc))

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, delta) in arrival order until every prompt finished."""
        if not self._tasks:
            async for output in self._only_prompt():
                yield 0, output
            return
        num_open = len(self._prompts)
        while num_open:
            index, item = await self._queue.get()
            if item is None:
                num_open -= 1
            elif isinstance(item, BaseException):
                raise engine_failure(item)
            else:
                yield index, item

    async def _only_prompt(self) -> AsyncIterator[RequestOutput]:
        rid = self.request_ids[0]
        async with aclosing(self._backend.generate(self._prompts[0], self._params[0], rid)) as it:
            try:
                async for output in it:
                    self._observe(0, output)
                    yield output
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = engine_failure(exc)
                if failure is exc:
                    raise
                raise failure from exc
        self._unfinished.discard(rid)

    async def final_outputs(self) -> list[RequestOutput]:
        """Runs every prompt to the end; their totals, in prompt order."""
        async for _ in self.outputs():
            pass
        return self.totals()

    def totals(self) -> list[RequestOutput]:
        """The totals (cumulative outputs) of the prompts that produced output, in prompt
        order; after :meth:`outputs` ended, every prompt's final output."""
        return [total.result() for total in self._totals if total.has_output]

    def _observe(self, index: int, output: RequestOutput) -> None:
        total = self._totals[index]
        total.add(output)
        timing = self._timing[index]
        now = time.perf_counter()
        timing.num_tokens += sum(len(c.token_ids) for c in output.outputs)
        if timing.first_token is None and timing.num_tokens > 0:
            timing.first_token = now
            self._metrics.ttft.observe(now - timing.start)
        if output.finished:
            self._record_finished(timing, output, now)

    def _record_finished(self, timing: Timing, output: RequestOutput, now: float) -> None:
        self._metrics.e2e.observe(now - timing.start)
        self._metrics.prompt_tokens.inc(output.num_prompt_tokens)
        self._metrics.generation_tokens.inc(timing.num_tokens)
        if timing.first_token is not None and timing.num_tokens > 1:
            per_token = (now - timing.first_token) / (timing.num_tokens - 1)
            self._metrics.tpot.observe(per_token)


def abort_reason(exc_type: type[BaseException] | None) -> str:
    """Why unfinished engine requests are being aborted (a metrics label)."""
    if exc_type is None:
        return "error"  # left early without an exception: an error was already reported
    if issubclass(exc_type, SlowReaderError):
        return "slow_reader"
    if issubclass(exc_type, (asyncio.CancelledError, ConnectionError)):
        return "client_disconnected"
    return "error"


def engine_failure(exc: BaseException) -> BaseException:
    """What the backend raised, as this request's failure: a refusal of the request (API or
    validation error) as it is, anything else an :class:`EngineRequestError` (the client is
    told only that the engine failed; :func:`~pe_server.errors.to_api_error` says so)."""
    if isinstance(exc, (APIError, PEValidationError)):
        return exc
    failure = EngineRequestError("the engine failed while serving the request")
    failure.__cause__ = exc
    return failure
