"""A plain reference backend on Hugging Face transformers (cross-checks the native engine).

One request at a time (an asyncio lock), each run in a worker thread as a token-by-token loop
over the HF model's forward with its KV cache: the prompt goes in as ``inputs_embeds`` (token
rows from the model's own embedding table, embeds rows spliced in), then one token per step.
Slow and simple on purpose; outputs are streamed as per-step deltas, as the native engine's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import torch

from pe_engine.models.eos import eos_token_ids
from pe_engine.outputs import CompletionOutput, Logprob, RequestOutput, RequestOutputKind
from pe_engine.prompt import Prompt
from pe_engine.sampling_params import SamplingParams
from pe_server.backends.base import BackendStats, EngineDeadError, ModelBackend, ModelInfo
from pe_server.backends.reference_sampling import StepSampler
from pe_server.config import ServerConfig
from pe_server.errors import APIError
from pe_server.structured import Constraint

log = logging.getLogger("pe_server")
Emit = Callable[[RequestOutput], None]


class TransformersBackend(ModelBackend):
    """HF ``AutoModelForCausalLM`` behind the :class:`~pe_server.backends.base.Backend` protocol."""

    name = "transformers"
    supports_prompt_logprobs = False
    supports_best_of = False

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self._lock = asyncio.Lock()
        self._aborted: set[str] = set()
        self._running: str | None = None
        self._num_waiting = 0
        self._is_dead = False
        self.model: Any = None
        self.eos_token_ids: frozenset[int] = frozenset()

    @property
    def is_healthy(self) -> bool:
        return self.model is not None and not self._is_dead

    async def compile_constraint(self, constraint: Constraint) -> None:
        raise APIError.bad_request(
            "Structured outputs and required or named tool calls are not supported by the "
            "transformers backend; the native backend has them.",
            code="unsupported_parameter",
            param=constraint.param,
        )

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pe_engine.demo_model import resolve_model
        from pe_engine.inputs.chat import ChatPromptBuilder

        model_dir = Path(resolve_model(self._config.model))
        tokenizer_dir = self._config.tokenizer or str(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        device = self._device()
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=self._dtype(model_dir))
        self.model = model.to(device).eval()
        hf = self.model.config
        self.eos_token_ids = eos_token_ids(model_dir, hf, self.tokenizer)  # as the native engine
        max_len = self._config.max_model_len or int(hf.max_position_embeddings)
        self.info = ModelInfo(
            hidden_size=int(hf.hidden_size),
            max_model_len=max_len,
            dtype=self.model.dtype,
            vocab_size=int(hf.vocab_size),
        )
        self.chat_builder = ChatPromptBuilder(
            self.tokenizer, enable_prompt_embeds=self._config.enable_prompt_embeds
        )
        if self._config.seed is not None:
            torch.manual_seed(self._config.seed)

    def _device(self) -> torch.device:
        wanted = self._config.device
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(wanted)

    def _dtype(self, model_dir: Path) -> torch.dtype:
        if self._config.dtype != "auto":
            return getattr(torch, self._config.dtype)
        from transformers import AutoConfig

        declared = getattr(AutoConfig.from_pretrained(str(model_dir)), "dtype", None)
        if isinstance(declared, str):
            declared = getattr(torch, declared, None)
        return declared if isinstance(declared, torch.dtype) else torch.float32

    async def shutdown(self) -> None:
        self._aborted.update({self._running} if self._running else set())
        self.model = None

    async def abort(self, request_id: str) -> None:
        if request_id == self._running:
            self._aborted.add(request_id)

    def stats(self) -> BackendStats:
        busy = 1 if self._running else 0
        return BackendStats(
            num_running=busy,
            num_waiting=self._num_waiting,
            num_free_blocks=1 - busy,
            num_total_blocks=1,
        )

    async def generate(
        self, prompt: Prompt, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        if not self.is_healthy:
            raise EngineDeadError("backend not running")
        self._num_waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._num_waiting -= 1
        try:
            async for output in self._run_locked(prompt, params, request_id):
                yield output
        finally:
            self._lock.release()

    async def _run_locked(
        self, prompt: Prompt, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RequestOutput | BaseException | None] = asyncio.Queue()

        def emit(item: RequestOutput | BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        self._running = request_id
        worker = threading.Thread(
            target=self._worker, args=(prompt, params, request_id, emit), daemon=True
        )
        worker.start()
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise EngineDeadError("reference model failed") from item
                yield item
        finally:
            self._aborted.add(request_id)
            await asyncio.shield(asyncio.to_thread(worker.join))
            self._aborted.discard(request_id)
            self._running = None

    def _worker(self, prompt: Prompt, params: SamplingParams, request_id: str, emit: Any) -> None:
        try:
            with torch.inference_mode():
                ReferenceRun(self, prompt, params, request_id, emit).run()
            emit(None)
        except Exception as exc:
            log.exception("transformers backend failed on %s", request_id)
            emit(exc)

    def is_aborted(self, request_id: str) -> bool:
        return request_id in self._aborted


class ReferenceRun:
    """The ``n`` branches of one request, generated one after the other."""

    def __init__(
        self,
        backend: TransformersBackend,
        prompt: Prompt,
        params: SamplingParams,
        request_id: str,
        emit: Emit,
    ) -> None:
        self.backend = backend
        self.prompt = prompt
        self.params = params
        self.request_id = request_id
        self.emit = emit
        self.tokenizer = backend.tokenizer
        self.outputs = [
            CompletionOutput(
                index=i,
                text="",
                token_ids=[],
                cumulative_logprob=None if params.logprobs is None else 0.0,
                logprobs=None if params.logprobs is None else [],
                finish_reason=None,
                stop_reason=None,
            )
            for i in range(params.n)
        ]
        # Per branch: characters, tokens and logprobs already sent, and whether it is done.
        self.sent = [[0, 0, 0] for _ in self.outputs]
        self.is_sent_done = [False for _ in self.outputs]
        self.prompt_token_ids = list(prompt.token_ids)  # one list, shared by every output

    def run(self) -> None:
        prompt_embeds = self._prompt_embeds()
        for branch in range(self.params.n):
            if not self._run_branch(branch, prompt_embeds):
                return  # aborted

    def _prompt_embeds(self) -> torch.Tensor:
        model = self.backend.model
        ids = torch.tensor(self.prompt.token_ids, device=model.device)
        table = model.get_input_embeddings()
        mask = self.prompt.is_token_ids
        if mask is None:
            return table(ids)
        is_token = torch.tensor(mask, dtype=torch.bool, device=model.device)
        rows = torch.zeros(len(mask), table.embedding_dim, dtype=model.dtype, device=model.device)
        rows[is_token] = table(ids[is_token])
        assert self.prompt.prompt_embeds is not None
        rows[~is_token] = self.prompt.prompt_embeds.to(model.device, model.dtype)
        return rows

    def _run_branch(self, branch: int, prompt_embeds: torch.Tensor) -> bool:
        from transformers import DynamicCache

        model = self.backend.model
        out = self.outputs[branch]
        sampler = StepSampler(
            self.params, self.prompt, branch, self.tokenizer, self.backend.eos_token_ids
        )
        cache = DynamicCache()
        logits = model(inputs_embeds=prompt_embeds[None], past_key_values=cache, use_cache=True)
        step_logits = logits.logits[0, -1].float()
        while True:
            if self.backend.is_aborted(self.request_id):
                return False
            token_id, step_logprobs = sampler.sample(step_logits, out.token_ids)
            self._append(out, token_id, step_logprobs)
            reason = sampler.finish(out)
            if reason is not None:
                out.finish_reason, out.stop_reason = reason
                out.text = sampler.final_text(out.token_ids)
                self._emit(finished=branch == self.params.n - 1)
                return True
            self._emit(finished=False)
            ids = torch.tensor([[token_id]], device=model.device)
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True)
            step_logits = logits.logits[0, -1].float()

    def _append(self, out: CompletionOutput, token_id: int, step: dict[int, Logprob]) -> None:
        out.token_ids.append(token_id)
        if out.logprobs is not None:
            out.logprobs.append(step)
            out.cumulative_logprob = (out.cumulative_logprob or 0.0) + step[token_id].logprob

    def _emit(self, finished: bool) -> None:
        """The delta of every branch not done: what it added since the previous output."""
        deltas = []
        for branch, out in enumerate(self.outputs):
            if self.is_sent_done[branch]:
                continue
            if out.finish_reason is None and out.token_ids:
                out.text = StepSampler.stream_text(self.tokenizer, out.token_ids, self.params)
            deltas.append(self._delta(branch, out))
        self.emit(
            RequestOutput(
                request_id=self.request_id,
                prompt=self.prompt.text,
                prompt_token_ids=self.prompt_token_ids,
                outputs=deltas,
                finished=finished,
                metrics=None,
                num_prompt_tokens=len(self.prompt.token_ids),
                num_cached_tokens=0,
                kind=RequestOutputKind.DELTA,
            )
        )

    def _delta(self, branch: int, out: CompletionOutput) -> CompletionOutput:
        num_chars, num_tokens, num_steps = self.sent[branch]
        logprobs = None if out.logprobs is None else out.logprobs[num_steps:]
        self.sent[branch] = [len(out.text), len(out.token_ids), num_steps + len(logprobs or [])]
        self.is_sent_done[branch] = out.finish_reason is not None
        return CompletionOutput(
            index=out.index,
            text=out.text[num_chars:],
            token_ids=out.token_ids[num_tokens:],
            cumulative_logprob=out.cumulative_logprob,
            logprobs=logprobs,
            finish_reason=out.finish_reason,
            stop_reason=out.stop_reason,
        )
