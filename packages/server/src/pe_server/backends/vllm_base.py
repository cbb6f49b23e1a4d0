"""What the two vLLM backends (``vllm`` in this process, ``vllm-remote`` in front of ``vllm
serve``) share as backends: pe renders and tokenizes every prompt itself from the model
directory, and refuses what vLLM cannot do before a request reaches it."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from pe_server.backends.base import EngineDeadError, ModelBackend
from pe_server.backends.hf_model import ModelFiles, load_model_files
from pe_server.backends.vllm_limits import check_vllm_request

if TYPE_CHECKING:
    from pe_engine.prompt import Prompt
    from pe_engine.sampling_params import SamplingParams


class VllmBaseBackend(ModelBackend, ABC):
    """A backend whose engine is vLLM. pe answers neither ``prompt_logprobs`` nor
    ``best_of > n`` through it (a 400 naming the backend)."""

    supports_prompt_logprobs = False
    supports_best_of = False

    @property
    @abstractmethod
    def is_healthy(self) -> bool:
        """Whether vLLM can take requests (each backend knows how it reaches vLLM)."""

    async def load_files(self) -> ModelFiles:
        """pe's tokenizer and chat builder for the model (vLLM alone loads the weights)."""
        files = await asyncio.to_thread(load_model_files, self._config)
        self.tokenizer, self.chat_builder = files.tokenizer, files.chat_builder
        return files

    def check_request(self, prompt: Prompt, params: SamplingParams) -> None:
        """Before a request goes to vLLM: EngineDeadError when the backend is down, a 400 for
        what vLLM cannot do safely."""
        if not self.is_healthy:
            raise EngineDeadError("backend not running")
        check_vllm_request(prompt, params)
