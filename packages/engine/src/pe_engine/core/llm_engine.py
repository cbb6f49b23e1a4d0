"""The synchronous engine: requests in, one ``step()`` at a time, per-step deltas out."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from pe_common.errors import InvalidRequestError
from pe_engine.config import EngineConfig
from pe_engine.core.block_manager import BlockManager
from pe_engine.core.output_processor import OutputProcessor, RequestState
from pe_engine.core.scheduler import Scheduler
from pe_engine.core.sequence import Sequence, SequenceStatus
from pe_engine.inputs.prompt_builder import PromptBuilder
from pe_engine.models.eos import eos_token_ids
from pe_engine.models.runner import ModelRunner, SampleResult, StepOutput, check_model_dir
from pe_engine.outputs import RequestOutput
from pe_engine.prompt import Prompt
from pe_engine.sampling_params import SamplingParams
from pe_engine.structured.grammar import GrammarCompiler, GrammarError

# Where a test's fault injector is called, in loop order: the AsyncEngine's command inbox, then
# one step (schedule -> prepare -> forward -> sample -> detokenize), then output delivery.
FAULT_STAGES = ("inbox", "schedule", "prepare", "forward", "sample", "detokenize", "deliver")
# Test hook: called with a stage and the step number; what it raises is fatal at that stage.
FaultInjector = Callable[[str, int], None]


class EngineFatalError(RuntimeError):
    """A failure after which the engine's state cannot be trusted: never a recoverable
    :class:`EngineStepError`, the AsyncEngine dies on it."""


class EngineStepError(RuntimeError):
    """A step failed inside the model runner; the requests in ``request_ids`` were failed."""

    def __init__(self, request_ids: list[str], cause: BaseException) -> None:
        super().__init__(f"engine step failed for {len(request_ids)} request(s): {cause!r}")
        self.request_ids = request_ids
        self.cause = cause


class LLMEngine:
    """Owns the model runner, the scheduler and the KV blocks; not thread-safe (one owner)."""

    def __init__(self, config: EngineConfig, *, runner: ModelRunner | None = None) -> None:
        self.config = config
        check_model_dir(config)  # before the tokenizer, whose error for a bad path is obscure
        self.tokenizer = load_tokenizer(config)
        # One EOS set for the whole engine: the runner's sampler bans it (min_tokens), the
        # scheduler stops on it.
        eos = eos_token_ids(config.model, config.hf_config, self.tokenizer)
        self.runner = runner or ModelRunner(config, eos_token_ids=eos)
        # The loaded model's shape: what prompts are checked against, fixed from here on.
        self.max_model_len = self.runner.max_model_len
        self.hidden_size = self.runner.hidden_size
        self.vocab_size = self.runner.vocab_size
        self.dtype: Any = self.runner.dtype
        self.block_manager = BlockManager(
            self.runner.num_kv_blocks,
            self.runner.block_size,
            enable_prefix_caching=config.enable_prefix_caching,
        )
        self.scheduler = Scheduler(
            self.block_manager,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            eos_token_ids=self.runner.sampler.eos_token_ids,
            tokenizer=self.tokenizer,
        )
        self.prompt_builder = PromptBuilder(
            tokenizer=self.tokenizer,
            hidden_size=self.runner.hidden_size,
            dtype=self.runner.dtype,
            vocab_size=self.runner.vocab_size,
            max_model_len=self.max_model_len,
            enable_prompt_embeds=config.enable_prompt_embeds,
        )
        self.output_processor = OutputProcessor(self.scheduler, self.tokenizer)
        self.grammars = GrammarCompiler(self.tokenizer, self.runner.vocab_size, eos)
        self._requests: dict[str, RequestState] = {}
        self._fault_injector: FaultInjector | None = None
        self.num_steps = 0
        self.num_scheduled_tokens = 0  # prompt, recompute and decode positions computed
        self.num_generation_tokens = 0

    @property
    def fault_injector(self) -> FaultInjector | None:
        """Test hook, None in service: called with ``(stage, step)`` as each of
        :data:`FAULT_STAGES` begins (``step``: :attr:`num_steps`, the step in progress)."""
        return self._fault_injector

    @fault_injector.setter
    def fault_injector(self, injector: FaultInjector | None) -> None:
        self._fault_injector = injector
        # prepare, forward and sample happen inside the runner's run()
        self.runner.fault_injector = None if injector is None else self.may_inject_fault

    def may_inject_fault(self, stage: str) -> None:
        """Call the fault injector, if any; what it raises becomes an :class:`EngineFatalError`
        so that a fault inside the runner is not retried as a step error."""
        if self._fault_injector is None:
            return
        try:
            self._fault_injector(stage, self.num_steps)
        except Exception as exc:
            raise EngineFatalError(f"fault injected at the {stage} stage") from exc

    @property
    def num_free_blocks(self) -> int:
        return self.block_manager.num_free_blocks

    @property
    def num_total_blocks(self) -> int:
        return self.block_manager.num_total_blocks

    # ---- requests --------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt: Prompt | str | Mapping[str, Any],
        params: SamplingParams,
        *,
        arrival_time: float | None = None,
    ) -> None:
        """Validate and queue a request; it joins the running batch at the next step.

        ``prompt``: a :class:`Prompt` or any form ``LLM.generate`` accepts. A prompt that
        :class:`PromptBuilder` already checked (``is_checked``) is trusted: on this thread only
        its length and its fit in the KV pool are checked (O(1)).
        """
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already running")
        prompt = self.prompt_builder.build(prompt)
        self._check_fits_pool(prompt)
        seqs = [
            Sequence.from_prompt(request_id, prompt, params, branch=i)
            for i in range(params.num_candidates)
        ]
        if params.structured_outputs is not None:
            compiled = self.compile_grammar(params)
            for seq in seqs:
                seq.grammar = compiled.new_matcher()
        self._requests[request_id] = RequestState.create(
            request_id, prompt, params, seqs, arrival_time or time.time()
        )
        self.scheduler.add_seqs(seqs)

    def compile_grammar(self, params: SamplingParams) -> Any:
        """The compiled constraint of ``params`` (cached; attached by the server when it
        compiled it off this thread). An invalid one is a 400 naming ``structured_outputs``."""
        assert params.structured_outputs is not None
        try:
            return self.grammars.compile(params.structured_outputs)
        except GrammarError as exc:
            raise InvalidRequestError(
                f"Invalid {params.structured_outputs.kind} constraint: {exc}",
                code="invalid_structured_output",
                param="structured_outputs",
            ) from None

    def _check_fits_pool(self, prompt: Prompt) -> None:
        capacity = self.block_manager.num_total_blocks * self.block_manager.block_size
        if prompt.num_tokens + 1 > capacity:
            raise InvalidRequestError(
                f"The prompt ({prompt.num_tokens} tokens) does not fit the KV cache "
                f"({capacity} token slots).",
                code="context_length_exceeded",
                param="prompt",
            )

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its blocks; returns its final delta (``abort``)."""
        request = self._requests.get(request_id)
        if request is None:
            return None
        seqs = request.seqs
        for seq in seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq, SequenceStatus.FINISHED_ABORTED)
        self.scheduler.pop_finished(seqs)
        return self._make_output(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._requests)

    # ---- the step ---------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """schedule -> run -> postprocess; returns the deltas of requests that progressed
        (``RequestOutputKind.DELTA``: only this step's new ids, text and logprobs)."""
        self.num_steps += 1
        if self._fault_injector is not None:
            self.may_inject_fault("schedule")
        scheduled = self.scheduler.schedule()
        step = self._execute(scheduled)
        if self._fault_injector is not None:
            self.may_inject_fault("detokenize")
        self._record_prompt_logprobs(scheduled, step)
        self.scheduler.postprocess(scheduled, step.samples)
        return self._collect_outputs(scheduled, step.samples)

    def _execute(self, scheduled: list[tuple[Sequence, int]]) -> StepOutput:
        if not scheduled:
            return StepOutput([], [])
        try:
            return self.runner.run(scheduled)
        except EngineFatalError:
            raise
        except Exception as exc:
            failed = list(dict.fromkeys(seq.request_id for seq, _ in scheduled))
            for request_id in failed:
                self.abort_request(request_id)
            raise EngineStepError(failed, exc) from exc

    def _collect_outputs(
        self, scheduled: list[tuple[Sequence, int]], results: list[SampleResult | None]
    ) -> list[RequestOutput]:
        now = time.time()
        touched: dict[str, RequestState] = {}
        for (seq, num_new), result in zip(scheduled, results, strict=True):
            request = self._requests[seq.request_id]
            if request.metrics.first_scheduled_time is None:
                request.metrics.first_scheduled_time = now
            self.num_scheduled_tokens += num_new
            if result is not None:
                self.num_generation_tokens += 1
                self.output_processor.record_sample(request, seq, result, now)
                touched[request.request_id] = request
        for seq in self.scheduler.pop_finished():
            touched[seq.request_id] = self._requests[seq.request_id]
        outputs = (self._make_output(request) for request in touched.values())
        return [output for output in outputs if output is not None]

    def _record_prompt_logprobs(
        self, scheduled: list[tuple[Sequence, int]], step: StepOutput
    ) -> None:
        for entry, position, result in step.prompt_logprobs:
            request = self._requests[scheduled[entry][0].request_id]
            self.output_processor.record_prompt_logprobs(request, position, result)

    def _make_output(self, request: RequestState) -> RequestOutput | None:
        output = self.output_processor.make_output(request)
        if output is not None and output.finished:
            self._release(request)
        return output

    def _release(self, request: RequestState) -> None:
        for seq in request.seqs:
            self.scheduler.forget(seq)
        del self._requests[request.request_id]

    def stats(self) -> dict[str, int]:
        return {
            "num_running": self.scheduler.num_running,
            "num_waiting": self.scheduler.num_waiting,
            "num_requests": len(self._requests),
            "num_free_blocks": self.block_manager.num_free_blocks,
            "num_total_blocks": self.block_manager.num_total_blocks,
            "prefix_cache_hits": self.block_manager.prefix_cache_hits,
            "prefix_cache_queries": self.block_manager.prefix_cache_queries,
            "num_preemptions": self.scheduler.num_preemptions,
            "num_steps": self.num_steps,
            "num_scheduled_tokens": self.num_scheduled_tokens,
            "num_generation_tokens": self.num_generation_tokens,
        }


def load_tokenizer(config: EngineConfig) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(config.tokenizer or config.model)
