"""AsyncEngine: one engine thread, concurrent streams, cancellation, and failures that never hang."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pe_engine import AsyncEngine, EngineConfig, EngineDeadError, EngineStepError, SamplingParams
from pe_engine.prompt_builder import build_text_prompt

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def config(model_dir: Path) -> EngineConfig:
    return EngineConfig(
        model=str(model_dir), dtype="float32", device="cpu", max_model_len=256,
        num_kv_blocks=64, block_size=8, enable_prompt_embeds=True,
    )  # fmt: skip


@pytest.fixture
def engine(tiny_llama_dir: Path) -> Iterator[AsyncEngine]:
    engine = AsyncEngine(config(tiny_llama_dir))
    engine.start()
    yield engine
    engine.shutdown()


def params(n: int = 12) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


async def collect(engine: AsyncEngine, text: str, request_id: str, n: int = 12) -> list[Any]:
    prompt = build_text_prompt(engine.tokenizer, text)
    return [out async for out in engine.generate(prompt, params(n), request_id)]


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_concurrent_generates_match_sequential_ones(engine: AsyncEngine) -> None:
    texts = [f"Concurrent request {i} " * (1 + i % 4) for i in range(8)]
    together = await asyncio.gather(*(collect(engine, t, f"c{i}") for i, t in enumerate(texts)))
    for i, (text, outs) in enumerate(zip(texts, together, strict=True)):
        assert outs[-1].finished and not any(o.finished for o in outs[:-1])
        assert [len(o.outputs[0].token_ids) for o in outs] == list(range(1, 13))
        alone = await collect(engine, text, f"s{i}")
        assert alone[-1].outputs[0].token_ids == outs[-1].outputs[0].token_ids
    stats = engine.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    assert engine.is_healthy and engine.errored is None


async def test_cancelling_the_consumer_aborts_and_frees_blocks(engine: AsyncEngine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        prompt = build_text_prompt(engine.tokenizer, "cancel me " * 10)
        async for _ in engine.generate(prompt, params(200), "victim"):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: engine.stats()["num_requests"] == 0)
    stats = engine.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


async def test_breaking_out_and_explicit_abort(engine: AsyncEngine) -> None:
    prompt = build_text_prompt(engine.tokenizer, "break early")
    stream = engine.generate(prompt, params(200), "early")
    async for _ in stream:
        break
    await stream.aclose()  # what a dropped consumer's finaliser does
    prompt2 = build_text_prompt(engine.tokenizer, "abort me")
    outs = []
    async for out in engine.generate(prompt2, params(200), "aborted"):
        outs.append(out)
        if len(outs) == 2:
            engine.abort("aborted")
    assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "abort"
    engine.abort("never-existed")
    await wait_until(lambda: engine.stats()["num_requests"] == 0)
    assert engine.stats()["num_free_blocks"] == engine.stats()["num_total_blocks"]


async def test_invalid_requests_raise_without_hurting_the_engine(engine: AsyncEngine) -> None:
    prompt = build_text_prompt(engine.tokenizer, "x " * 300)
    with pytest.raises(ValueError, match="maximum context length"):
        async for _ in engine.generate(prompt, params(), "too-long"):
            pass
    outs = await collect(engine, "still fine", "ok")
    assert outs[-1].finished and engine.is_healthy


class FlakyRunner:
    """Wraps the real runner and raises from ``run`` (the engine's entry point) on chosen calls."""

    def __init__(self, runner: Any, fail_calls: set[int]) -> None:
        self._runner = runner
        self.fail_calls = fail_calls
        self.num_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)

    def run(self, scheduled: Any) -> Any:
        self.num_calls += 1
        if self.num_calls in self.fail_calls:
            raise RuntimeError("injected runner failure")
        return self._runner.run(scheduled)


async def test_a_failing_step_fails_its_requests_only(tiny_llama_dir: Path) -> None:
    engine = AsyncEngine(config(tiny_llama_dir))
    engine.engine.runner = FlakyRunner(engine.engine.runner, {3})
    engine.start()
    try:
        with pytest.raises(EngineStepError):
            await collect(engine, "this batch fails", "f1")
        outs = await collect(engine, "the next one works", "f2")
        assert outs[-1].finished and engine.is_healthy
        assert engine.stats()["num_free_blocks"] == engine.stats()["num_total_blocks"]
    finally:
        engine.shutdown()


async def test_fault_injection_kills_the_engine_and_fails_everyone(tiny_llama_dir: Path) -> None:
    def fault(step: int) -> None:
        if step >= 5:
            raise RuntimeError("injected fault")

    engine = AsyncEngine(config(tiny_llama_dir), fault_injector=fault)
    engine.start()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(collect(engine, f"doomed {i}", f"d{i}", n=100) for i in range(3)),
                return_exceptions=True,
            ),
            timeout=30,
        )
        assert all(isinstance(r, EngineDeadError) for r in results)
        assert not engine.is_healthy and engine.errored is not None
        with pytest.raises(EngineDeadError):
            await collect(engine, "after death", "late")
        assert engine.stats()["num_total_blocks"] > 0  # stats still answer
    finally:
        engine.shutdown()


async def test_shutdown_fails_in_flight_requests(tiny_llama_dir: Path) -> None:
    engine = AsyncEngine(config(tiny_llama_dir))
    engine.start()
    task = asyncio.create_task(collect(engine, "long running", "inflight", n=200))
    await wait_until(lambda: engine.stats()["num_running"] > 0)
    await asyncio.to_thread(engine.shutdown)
    with pytest.raises(EngineDeadError):
        await asyncio.wait_for(task, timeout=10)
    assert not engine.is_healthy


async def test_the_engine_thread_is_the_one_multithreaded_kernel_user(
    tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model loads on a thread that exits, the engine thread runs kernels on the configured
    count, and threads that start kernels later get one (pe_engine/kernel_threads.py)."""
    import threading

    import torch

    from pe_engine import async_engine

    loaders: list[threading.Thread] = []
    real_engine = async_engine.LLMEngine

    def recording_engine(cfg: EngineConfig) -> Any:
        loaders.append(threading.current_thread())
        return real_engine(cfg)

    seen: list[int] = []
    monkeypatch.setattr(async_engine, "LLMEngine", recording_engine)
    engine = AsyncEngine(
        config(tiny_llama_dir).model_copy(update={"num_threads": 2}),
        fault_injector=lambda step: seen.append(torch.get_num_threads()),
    )
    assert loaders and loaders[0] is not threading.current_thread()
    assert not loaders[0].is_alive()  # the loading thread exited, and its OpenMP team with it
    main_threads = torch.get_num_threads()
    engine.start()
    try:
        await collect(engine, "count the threads", "t1", n=3)
        assert seen and set(seen) == {2}
        later: list[int] = []
        worker = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert later == [1]
        assert torch.get_num_threads() == main_threads  # a thread that had its count keeps it
    finally:
        engine.shutdown()
