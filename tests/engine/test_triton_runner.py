"""The engine on TritonAttentionBackend (Triton's interpreter on CPU) against the torch
reference backend: greedy tokens equal for text, embeds and mixed prompts, with chunked
prefill, prefix-cache hits and batches that join and leave; and the CUDA-graph decode path
(static buffers, padded rows with slot -1) run eagerly.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (tox -e triton installs it)")

# Imported after TRITON_INTERPRET is set: triton reads it when the kernels are defined.
from pe_engine import LLM, SamplingParams
from pe_engine.attention.triton_backend import TritonAttentionBackend
from pe_engine.cuda.graphs import DecodeGraphs, graph_batch_sizes

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("torch_single_thread")]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class EagerDecodeGraphs(DecodeGraphs):
    """DecodeGraphs whose "replay" runs the recorded forward eagerly (no CUDA needed):
    the same staging, padding and static metadata as a real replay."""

    def capture(self) -> None:
        self.graphs = dict.fromkeys(self.batch_sizes)  # type: ignore[arg-type]
        self.replayed: list[int] = []  # batch sizes (before padding) that replayed

    def replay(self, input_ids: Any, positions: Any, metadata: Any) -> torch.Tensor:
        self.replayed.append(metadata.num_decode_tokens)
        batch_size = self.stage(input_ids, positions, metadata)
        static = self.static_metadata(batch_size)
        self.loaded.backend.prepare(static)
        self.run(batch_size, static)
        return self.hidden[: metadata.num_decode_tokens]


def _llm(model_dir: Path, backend: str) -> LLM:
    return LLM(
        str(model_dir), dtype="float32", device=DEVICE, enable_prompt_embeds=True,
        attention_backend=backend, enforce_eager=True, max_model_len=256, block_size=16,
        num_kv_blocks=40, max_num_seqs=6, max_num_batched_tokens=48,
    )  # fmt: skip


def _prompts(llm: LLM) -> list[Any]:
    """Text, ids with a shared 20-id prefix (prefix-cache hits), embeds and a mixed prompt,
    long enough that the 48-token budget chunks their prefills."""
    rng = random.Random(3)
    embed = llm.engine.runner.embed_tokens
    shared = [rng.randrange(3, 49000) for _ in range(20)]
    ids = [shared + [rng.randrange(3, 49000) for _ in range(rng.randint(5, 40))] for _ in range(3)]
    mixed_ids = [rng.randrange(3, 49000) for _ in range(37)]
    mask = [i % 4 != 2 for i in range(len(mixed_ids))]
    rows = embed([t for t, m in zip(mixed_ids, mask, strict=True) if not m])
    return [
        "Paged attention reads the cache one block at a time, and",
        *({"prompt_token_ids": p} for p in ids),
        {"prompt_embeds": embed(ids[0])},
        {"prompt_token_ids": mixed_ids, "prompt_embeds": rows, "is_token_ids": mask},
    ]


def _greedy(llm: LLM, prompts: list[Any]) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


@pytest.fixture(scope="module", params=["tiny_llama_dir", "tiny_qwen3_dir"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue(request.param))


_REFERENCES: dict[Path, tuple[list[Any], list[list[int]]]] = {}


def reference(model_dir: Path) -> tuple[list[Any], list[list[int]]]:
    """The prompts and their greedy tokens on the torch backend (computed once per model)."""
    if model_dir not in _REFERENCES:
        llm = _llm(model_dir, "torch")
        prompts = _prompts(llm)
        _REFERENCES[model_dir] = prompts, _greedy(llm, prompts)
    return _REFERENCES[model_dir]


def test_triton_backend_matches_the_torch_backend(model_dir: Path) -> None:
    llm = _llm(model_dir, "triton")
    assert isinstance(llm.engine.runner.backend, TritonAttentionBackend)
    prompts, expected = reference(model_dir)
    assert _greedy(llm, prompts) == expected


def test_padded_graph_decode_matches_the_torch_backend(tiny_qwen3_dir: Path) -> None:
    """Qwen3 only (GQA, head_dim 32, q/k norms): the interpreter is slow."""
    llm = _llm(tiny_qwen3_dir, "triton")
    runner = llm.engine.runner
    graphs = EagerDecodeGraphs(runner.loaded, max_num_seqs=6, max_model_len=runner.max_model_len)
    graphs.capture()
    runner.decode_graphs = graphs
    prompts, expected = reference(tiny_qwen3_dir)
    assert _greedy(llm, prompts) == expected
    assert graphs.replayed and set(graphs.replayed) - {1, 2, 4, 6}  # 3 or 5 rows: padded


def test_warmup_forward_runs_on_the_triton_backend(tiny_qwen3_dir: Path) -> None:
    from test_cuda_memory import check_warmup_leaves_the_engine_alone

    check_warmup_leaves_the_engine_alone(_llm(tiny_qwen3_dir, "triton"))


def test_graph_batch_sizes() -> None:
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(6) == [1, 2, 4, 6]
    assert graph_batch_sizes(16) == [1, 2, 4, 8, 16]
    assert graph_batch_sizes(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert graph_batch_sizes(50) == [1, 2, 4, 8, 16, 32, 48, 50]


_CPU_RUN = """
import sys
from pe_engine import LLM, SamplingParams
llm = LLM(sys.argv[1], device="cpu", max_model_len=64)
llm.generate("Hello there", SamplingParams(max_tokens=3), use_tqdm=False)
lazy = ("pe_engine.attention.kernels.triton_paged", "pe_engine.attention.triton_backend", "pe_engine.cuda.graphs")
sys.exit(", ".join(m for m in lazy if m in sys.modules) or 0)
"""


def test_the_cpu_engine_never_imports_accelerator_modules(tiny_llama_dir: Path) -> None:
    """With triton installed, a CPU engine still imports none of the CUDA-only modules (torch
    itself may import triton when it is installed, so that is not checked)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-c", _CPU_RUN, str(tiny_llama_dir)], env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
