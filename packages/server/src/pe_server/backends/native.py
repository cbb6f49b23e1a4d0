"""The default backend: pe-engine's AsyncEngine in this process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pe_common.errors import PEValidationError
from pe_server.backends.base import BackendStats, EngineDeadError, ModelBackend, ModelInfo
from pe_server.config import ServerConfig
from pe_server.errors import APIError

if TYPE_CHECKING:
    from pe_engine.outputs import RequestOutput
    from pe_engine.prompt import Prompt
    from pe_engine.sampling_params import SamplingParams
    from pe_server.structured import Constraint

log = logging.getLogger("pe_server")


class FaultAfterSteps:
    """Test hook for the engine's ``fault_injector``: ``stage`` raises once the engine is past
    step ``num_steps``."""

    def __init__(self, num_steps: int, stage: str) -> None:
        self.num_steps = num_steps
        self.stage = stage

    def __call__(self, stage: str, step: int) -> None:
        if stage == self.stage and step > self.num_steps:
            raise RuntimeError(f"injected fault at the {stage} stage of engine step {step}")


class NativeBackend(ModelBackend):
    """:class:`~pe_server.backends.base.Backend` on ``pe_engine.AsyncEngine``."""

    name = "native"
    supports_prompt_logprobs = True
    supports_best_of = True

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.engine: Any = None
        # Grammars compile here: never on the event loop, never on the engine thread.
        self._grammar_pool = ThreadPoolExecutor(2, "pe-grammar")

    @property
    def is_healthy(self) -> bool:
        return self.engine is not None and bool(self.engine.is_healthy)

    def engine_config(self) -> Any:
        from pe_engine.config import EngineConfig
        from pe_engine.demo_model import resolve_model

        c = self._config
        return EngineConfig(model=str(resolve_model(c.model)), **c.engine_settings())

    async def start(self) -> None:
        from pe_engine.async_engine import AsyncEngine

        config = await asyncio.to_thread(self.engine_config)
        engine = await asyncio.to_thread(AsyncEngine, config)
        c = self._config
        if c.test_fault_after_steps is not None:
            log.warning(
                "TEST HOOK: engine fails at %s after %d steps",
                c.test_fault_stage,
                c.test_fault_after_steps,
            )
            engine.fault_injector = FaultAfterSteps(c.test_fault_after_steps, c.test_fault_stage)
        engine.start()
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.chat_builder = engine.chat_builder
        self.info = ModelInfo(
            hidden_size=int(engine.hidden_size),
            max_model_len=int(engine.max_model_len),
            dtype=engine.dtype,
            vocab_size=int(engine.vocab_size),
        )

    async def shutdown(self) -> None:
        self._grammar_pool.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None:
            await asyncio.to_thread(self.engine.shutdown)

    async def compile_constraint(self, constraint: Constraint) -> None:
        """Compile (or find cached) the constraint's grammar and attach it to its params; a
        400 naming the field for an invalid one or one slower than the budget."""
        from pe_engine.structured.grammar import GrammarError

        params = constraint.params
        grammars = self.engine.engine.grammars
        params.compiled = grammars.cached(params)
        if params.compiled is not None:
            return
        compile_grammar = grammars.compile
        future = asyncio.get_running_loop().run_in_executor(
            self._grammar_pool, compile_grammar, params
        )
        timeout = self._config.structured_outputs_timeout
        try:
            params.compiled = await asyncio.wait_for(future, timeout)
        except GrammarError as exc:
            raise APIError.bad_request(
                f"Invalid {params.kind} constraint: {exc}",
                code="invalid_structured_output",
                param=constraint.param,
            ) from None
        except asyncio.TimeoutError:
            raise APIError.bad_request(
                f"The {params.kind} constraint did not compile within {timeout:g} s.",
                code="structured_output_timeout",
                param=constraint.param,
            ) from None

    async def generate(
        self, prompt: Prompt, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        if not self.is_healthy:
            raise EngineDeadError("engine not running")
        try:
            async for output in self.engine.generate(prompt, params, request_id):
                yield output
        except (PEValidationError, asyncio.CancelledError):
            raise
        except Exception as exc:
            if not self.is_healthy:
                raise EngineDeadError("engine failed") from exc
            raise

    async def abort(self, request_id: str) -> None:
        if self.engine is not None:
            self.engine.abort(request_id)

    def stats(self) -> BackendStats:
        if self.engine is None:
            return BackendStats()
        s = self.engine.stats()
        return BackendStats(
            num_running=s["num_running"],
            num_waiting=s["num_waiting"],
            num_free_blocks=s["num_free_blocks"],
            num_total_blocks=s["num_total_blocks"],
            prefix_cache_hits=s["prefix_cache_hits"],
            prefix_cache_queries=s["prefix_cache_queries"],
        )
