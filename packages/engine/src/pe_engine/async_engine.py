"""The engine loop on one dedicated thread, driven from asyncio through thread-safe queues."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import queue
import threading
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from pe_common.protocol.validation import check_cache_salt
from pe_engine.config import EngineConfig
from pe_engine.core.llm_engine import EngineStepError, FaultInjector, LLMEngine
from pe_engine.inputs.chat import ChatPromptBuilder
from pe_engine.inputs.embeds_store import EmbedsLease, EmbedsStore, StoredEmbeds
from pe_engine.models.kernel_threads import claim_kernel_threads
from pe_engine.outputs import RequestOutput
from pe_engine.prompt import Prompt
from pe_engine.request_streams import StreamItem, StreamRegistry
from pe_engine.sampling_params import SamplingParams

log = logging.getLogger("pe_engine")

# Failed steps in a row after which the engine is declared dead.
MAX_CONSECUTIVE_STEP_FAILURES = 3


class EngineDeadError(RuntimeError):
    """The engine loop stopped; no request can be served any more."""


class AsyncEngine:
    """Serves ``generate`` calls from any event loop while one thread owns all engine state.

    Handlers only submit, await and abort: commands go through an inbox that the engine
    thread drains at the start of each step; outputs come back through
    ``loop.call_soon_threadsafe`` (once per loop and step) into a per-request stream.

    On the CPU the engine thread is the process's one multi-threaded kernel user: the model is
    loaded on a thread that then exits, and other threads run kernels on one thread
    (:mod:`pe_engine.models.kernel_threads` says why).

    Any exception on the engine thread outside the model runner's recoverable
    :class:`EngineStepError` kills the engine: every request in flight fails with
    :class:`EngineDeadError`, ``is_healthy`` turns False and new requests are refused.

    ``fault_injector`` (tests): :attr:`LLMEngine.fault_injector`, called with ``(stage, step)``
    at each of ``llm_engine.FAULT_STAGES``; what it raises kills the engine at that stage.

    ``embeds_store`` holds the embeddings stored by :meth:`create_embeds`, whose handles
    ``generate`` takes as the offline ``LLM`` does (default: a 1 GiB store, one hour's TTL).
    """

    def __init__(
        self,
        config: EngineConfig,
        *,
        fault_injector: FaultInjector | None = None,
        engine: LLMEngine | None = None,
        embeds_store: EmbedsStore | None = None,
    ) -> None:
        self.config = config
        if engine is None:
            engine, self._kernel_threads = _build_engine(config)
        else:
            self._kernel_threads = torch.get_num_threads()
        self.engine = engine
        self.engine.fault_injector = fault_injector
        # The caller side gets its own tokenizer copy: the engine thread detokenizes with its.
        self.tokenizer = copy.deepcopy(self.engine.tokenizer)
        self.chat_builder = ChatPromptBuilder(
            self.tokenizer, enable_prompt_embeds=config.enable_prompt_embeds
        )
        self.prompt_builder = dataclasses.replace(
            self.engine.prompt_builder, tokenizer=self.tokenizer
        )
        self.embeds_store = EmbedsStore() if embeds_store is None else embeds_store
        self.hidden_size = self.engine.hidden_size
        self.max_model_len = self.engine.max_model_len
        self.vocab_size = self.engine.vocab_size
        self.dtype = self.engine.dtype
        self.errored: BaseException | None = None
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams = StreamRegistry()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._num_failed_steps = 0
        self._stats = self.engine.stats()

    @property
    def fault_injector(self) -> FaultInjector | None:
        return self.engine.fault_injector

    @fault_injector.setter
    def fault_injector(self, injector: FaultInjector | None) -> None:
        self.engine.fault_injector = injector

    @property
    def is_healthy(self) -> bool:
        return self.errored is None and self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pe-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the loop; requests still in flight fail with EngineDeadError."""
        self._stop = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._streams.fail_all(EngineDeadError("engine shut down"))

    def stats(self) -> dict[str, int]:
        """A snapshot taken by the engine thread after its last step (safe from any thread)."""
        return dict(self._stats)

    # ---- the caller's side ------------------------------------------------------------------

    def create_embeds(self, prompt_embeds: torch.Tensor) -> StoredEmbeds:
        """Check and store ``prompt_embeds`` once, as :meth:`LLM.create_embeds
        <pe_engine.llm.LLM.create_embeds>` does; ``generate`` takes the object returned, or
        ``{"id": obj.id}``, as a prompt dict's ``prompt_embeds``."""
        return self.embeds_store.put(self.prompt_builder.validate_embeds(prompt_embeds))

    async def generate(
        self, prompt: Prompt | str | Mapping[str, Any], params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        """The deltas of one request (``RequestOutputKind.DELTA``; a consumer that fell behind
        gets several steps merged into one); the last one has ``finished=True``.

        ``prompt``: a :class:`Prompt`, or any form the offline ``LLM.generate`` takes (a str,
        a prompt dict, whose ``prompt_embeds`` may be a handle from :meth:`create_embeds`,
        pinned until the request ends). Cancelling the consumer or closing the iterator aborts
        the request. A prompt not checked yet (``is_checked``) is checked here, on the caller's
        side, so that the engine thread never reads a whole prompt.
        """
        if self.errored is not None or self._stop:
            raise EngineDeadError("engine is not running") from self.errored
        lease = EmbedsLease(self.embeds_store)
        try:
            prompt = self._build(prompt, lease)
            stream = self._streams.open(request_id)
        except BaseException:
            lease.release()
            raise
        self._submit("add", (request_id, prompt, params))
        finished = False
        try:
            if self.errored is not None:  # died before it could see this stream
                finished = True
                raise EngineDeadError("engine is not running") from self.errored
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
        finally:
            lease.release()
            is_aborted = self._streams.close(request_id, stream)
            if not finished and not is_aborted:
                self._submit("abort", request_id)

    def _build(self, prompt: Prompt | str | Mapping[str, Any], lease: EmbedsLease) -> Prompt:
        if isinstance(prompt, Prompt):
            return prompt if prompt.is_checked else self.prompt_builder.validate(prompt)
        salt = prompt.get("cache_salt") if isinstance(prompt, Mapping) else None
        if isinstance(prompt, Mapping) and self.config.enable_prompt_embeds:
            prompt = lease.resolve_prompt(prompt)
        built = self.prompt_builder.build(prompt)
        if salt is not None:
            check_cache_salt(salt)
            built.cache_salt = salt
        return built

    def abort(self, request_id: str) -> None:
        """Abort a request (harmless for unknown or finished ids). Each request is aborted
        once: an abort after its stream ended or after an earlier abort is not sent again."""
        if self._streams.claim_abort(request_id):
            self._submit("abort", request_id)

    def _submit(self, command: str, payload: Any) -> None:
        self._inbox.put((command, payload))
        self._wakeup.set()

    # ---- the engine thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self.engine.runner.device.type == "cpu":
                claim_kernel_threads(self._kernel_threads)
            while not self._stop and self.errored is None:
                self._wakeup.clear()
                self._drain_inbox()
                if self.engine.has_unfinished_requests():
                    self._step()
                else:
                    self._wakeup.wait()
        except BaseException as exc:  # anywhere: the engine state can no longer be trusted
            self._die(exc)

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except EngineStepError as exc:
            self._on_step_error(exc)
            return
        self._num_failed_steps = 0
        self._stats = self.engine.stats()
        if self.engine.fault_injector is not None:
            self.engine.may_inject_fault("deliver")
        self._deliver_all([(output.request_id, output) for output in outputs])

    def _drain_inbox(self) -> None:
        while True:
            try:
                command, payload = self._inbox.get_nowait()
            except queue.Empty:
                break
            if self.engine.fault_injector is not None:
                self.engine.may_inject_fault("inbox")
            if command == "add":
                self._add(*payload)
            else:
                output = self.engine.abort_request(payload)
                if output is not None:
                    self._deliver(payload, output)
        self._stats = self.engine.stats()

    def _add(self, request_id: str, prompt: Prompt, params: SamplingParams) -> None:
        # A request that cannot be added fails alone: hostile input must not kill the engine.
        try:
            self.engine.add_request(request_id, prompt, params)
        except Exception as exc:
            self._deliver(request_id, exc)

    def _on_step_error(self, exc: EngineStepError) -> None:
        log.error("engine step failed: %r", exc.cause)
        self._num_failed_steps += 1
        self._stats = self.engine.stats()
        self._deliver_all([(request_id, exc) for request_id in exc.request_ids])
        if self._num_failed_steps >= MAX_CONSECUTIVE_STEP_FAILURES:
            raise EngineDeadError(f"{self._num_failed_steps} engine steps failed in a row") from exc

    def _die(self, exc: BaseException) -> None:
        """Fail every stream, whatever else goes wrong: nothing here may raise."""
        self.errored = exc  # first, so that generate refuses what fail_all cannot see
        dead = EngineDeadError("the engine failed and cannot continue")
        dead.__cause__ = exc
        self._streams.fail_all(dead)
        with contextlib.suppress(Exception):
            log.error("engine loop died", exc_info=exc)
        with contextlib.suppress(Exception):
            self._stats = self.engine.stats()

    def _deliver(self, request_id: str, item: StreamItem) -> None:
        self._deliver_all([(request_id, item)])

    def _deliver_all(self, items: list[tuple[str, StreamItem]]) -> None:
        self._streams.deliver(items)


def _build_engine(config: EngineConfig) -> tuple[LLMEngine, int]:
    """The engine and its CPU kernel thread count, built on a thread that exits afterwards."""

    def build() -> tuple[LLMEngine, int]:
        engine = LLMEngine(config)
        return engine, torch.get_num_threads()

    with ThreadPoolExecutor(1, thread_name_prefix="pe-engine-load") as pool:
        return pool.submit(build).result()
