"""``--backend vllm``: vLLM's async engine in this process, behind pe's API.

pe still parses, validates and decodes every request, renders chat templates and builds the
prompt; vLLM only receives ready inputs: ``prompt_token_ids`` for text-only prompts, the user's
rows for pure-embeds prompts, and vLLM's mixed form (``prompt_embeds`` with a row per position,
``prompt_token_ids`` and the ``prompt_is_token_ids`` mask) for chats with embeds parts, so vLLM's
own (possibly tensor-parallel) embedding layer fills the token rows. vLLM's engine arguments
come from pe's shared flags plus the pass-through flags (``ServerConfig.vllm_args``), so
``--tensor-parallel-size``, ``--pipeline-parallel-size`` and ``--distributed-executor-backend
ray`` work as they do for ``vllm serve``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

import torch

from pe_engine.outputs import CompletionOutput, Logprob, RequestOutput
from pe_engine.prompt import Prompt
from pe_engine.sampling_params import SamplingParams
from pe_server.backends.base import BackendStats, EngineDeadError, ModelInfo
from pe_server.backends.vllm_base import VllmBaseBackend
from pe_server.backends.vllm_mapping import DeltaMerger, sampling_fields, structured_fields
from pe_server.config import ServerConfig
from pe_server.errors import APIError

log = logging.getLogger("pe_server")
# pe flags that vLLM's engine also has, forwarded when the user set them.
SHARED_FLAGS = {
    "max_model_len": "--max-model-len",
    "seed": "--seed",
    "tokenizer": "--tokenizer",
    "max_num_seqs": "--max-num-seqs",
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "block_size": "--block-size",
    "kv_cache_memory": "--kv-cache-memory-bytes",
    "quantization": "--quantization",
}
MAX_ERROR_MESSAGE = 300


def engine_argv(config: ServerConfig, model_dir: str) -> list[str]:
    """vLLM CLI arguments: pe's shared flags first, so pass-through flags override them."""
    argv = ["--model", model_dir, "--dtype", config.dtype]
    for field, flag in SHARED_FLAGS.items():
        value = getattr(config, field)
        if field in config.model_fields_set and value is not None:
            argv += [flag, str(value)]
    if "enable_prefix_caching" in config.model_fields_set:
        argv.append(
            "--enable-prefix-caching"
            if config.enable_prefix_caching
            else "--no-enable-prefix-caching"
        )
    if config.enable_prompt_embeds:
        argv.append("--enable-prompt-embeds")
    if config.served_model_name:
        argv += ["--served-model-name", *config.served_model_name]
    return argv + structured_outputs_argv(config) + list(config.vllm_args)


def structured_outputs_argv(config: ServerConfig) -> list[str]:
    """pe's ``--structured-outputs-config`` as vLLM's: vLLM reads the JSON options from its
    engine config only (a request's own are ignored), and only its ``guidance`` backend (pe's
    grammar engine) takes them all. vLLM has no ``whitespace_pattern`` option."""
    options = config.structured_outputs_config.model_dump(
        exclude={"backend", "whitespace_pattern"}, exclude_defaults=True
    )
    if not options:
        return []
    return ["--structured-outputs-config", json.dumps({"backend": "guidance", **options})]


def build_engine_args(argv: list[str]) -> Any:
    """vLLM's ``AsyncEngineArgs`` parsed by vLLM's own parser (its names, checks and help)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser(prog="pe-server (vllm)"))
    return AsyncEngineArgs.from_cli_args(parser.parse_args(argv))


class VllmBackend(VllmBaseBackend):
    """:class:`~pe_server.backends.base.Backend` on ``vllm.v1.engine.async_llm.AsyncLLM``."""

    name = "vllm"

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.engine: Any = None
        self._num_running = 0

    @property
    def is_healthy(self) -> bool:
        return self.engine is not None and not self.engine.errored

    async def start(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        files = await self.load_files()
        argv = engine_argv(self._config, str(files.model_dir))
        log.info("vllm engine arguments: %s", " ".join(argv))
        engine_args = build_engine_args(argv)
        # Builds the engine core (its own process; Ray actors with the ray executor).
        self.engine = AsyncLLM.from_engine_args(engine_args)
        model_config = self.engine.model_config
        self.info = ModelInfo(
            hidden_size=int(model_config.get_hidden_size()),
            max_model_len=int(model_config.max_model_len),
            dtype=model_config.dtype,
            vocab_size=files.vocab_size,
        )

    async def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()  # cancels its output task: must run on the event loop

    async def abort(self, request_id: str) -> None:
        if self.engine is not None:
            await self.engine.abort(request_id)

    def stats(self) -> BackendStats:
        return BackendStats(num_running=self._num_running)

    async def generate(
        self, prompt: Prompt, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError as VllmDeadError

        self.check_request(prompt, params)
        vllm_params = to_vllm_params(params)
        merger = OutputMerger(request_id, prompt, params)
        self._num_running += 1
        try:
            async for output in self.engine.generate(
                engine_prompt(prompt), vllm_params, request_id
            ):
                yield merger.add(output)
        except VllmDeadError as exc:
            raise EngineDeadError("vLLM engine failed") from exc
        except (ValueError, VLLMClientError) as exc:  # vLLM's input validation: a bad regex
            # or schema is a VLLMValidationError, no longer a ValueError since vLLM 0.32
            raise APIError.bad_request(
                str(exc)[:MAX_ERROR_MESSAGE],
                code="invalid_request",
                param=getattr(exc, "parameter", None),
            ) from None
        finally:
            self._num_running -= 1


def engine_prompt(prompt: Prompt) -> dict[str, Any]:
    """The vLLM prompt dict for pe's compact prompt, with its (per-tenant) ``cache_salt``."""
    inputs = engine_inputs(prompt)
    if prompt.cache_salt is not None:
        inputs["cache_salt"] = prompt.cache_salt
    return inputs


def engine_inputs(prompt: Prompt) -> dict[str, Any]:
    if prompt.prompt_embeds is None or prompt.is_token_ids is None:
        return {"prompt_token_ids": list(prompt.token_ids)}
    if prompt.is_pure_embeds:
        return {"prompt_embeds": prompt.prompt_embeds}
    # vLLM's mixed form: a row for every position; token rows are filled by vLLM's embedding.
    is_token = torch.tensor(prompt.is_token_ids, dtype=torch.bool)
    rows = prompt.prompt_embeds
    full = torch.zeros(prompt.num_tokens, rows.shape[1], dtype=rows.dtype)
    full[~is_token] = rows
    return {
        "prompt_embeds": full,
        "prompt_token_ids": list(prompt.token_ids),
        "prompt_is_token_ids": list(prompt.is_token_ids),
    }


def to_vllm_params(params: SamplingParams) -> Any:
    """pe's SamplingParams as vLLM's (same names, same meaning), delta outputs."""
    from vllm.sampling_params import RequestOutputKind as VllmOutputKind

    from vllm import SamplingParams as VllmSamplingParams

    structured = structured_fields(params)
    if structured is not None:
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(**structured)
    return VllmSamplingParams(
        **sampling_fields(params),
        prompt_logprobs=params.prompt_logprobs,
        output_kind=VllmOutputKind.DELTA,
        structured_outputs=structured,
    )


class OutputMerger(DeltaMerger):
    """vLLM's delta ``RequestOutput`` objects (one branch each when n > 1) -> pe's deltas."""

    def add(self, output: Any) -> RequestOutput:
        return self._merge(
            {int(c.index): c for c in output.outputs},
            finished=bool(output.finished),
            num_cached_tokens=int(getattr(output, "num_cached_tokens", None) or 0),
        )

    def _delta(self, index: int, completion: Any) -> CompletionOutput:
        if completion is not None:
            return to_pe_completion(completion)
        return CompletionOutput(
            index=index,
            text="",
            token_ids=[],
            cumulative_logprob=self.cumulative_logprobs[index],
            logprobs=[] if self.wants_logprobs else None,
        )


def to_pe_completion(completion: Any) -> CompletionOutput:
    logprobs = None
    if completion.logprobs is not None:
        logprobs = [
            {int(tid): Logprob(float(lp.logprob), rank=lp.rank) for tid, lp in step.items()}
            for step in completion.logprobs
        ]
    return CompletionOutput(
        index=int(completion.index),
        text=str(completion.text),
        token_ids=[int(t) for t in completion.token_ids],
        cumulative_logprob=completion.cumulative_logprob,
        logprobs=logprobs,
        finish_reason=completion.finish_reason,
        stop_reason=completion.stop_reason,
    )
