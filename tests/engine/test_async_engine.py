"""AsyncEngine: one engine thread, concurrent streams, cancellation, and failures that never hang."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pe_engine import AsyncEngine, EngineConfig, EngineDeadError, EngineStepError, SamplingParams
from pe_engine.async_engine import MAX_CONSECUTIVE_STEP_FAILURES
from pe_engine.core.llm_engine import FAULT_STAGES, EngineFatalError
from pe_engine.inputs.prompt_builder import build_text_prompt
from pe_engine.outputs import OutputAccumulator, RequestOutputKind

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


def total(outs: list[Any]) -> Any:
    """A request's deltas folded into its totals."""
    accumulator = OutputAccumulator()
    for out in outs:
        assert out.kind is RequestOutputKind.DELTA
        accumulator.add(out)
    return accumulator.result()


async def test_concurrent_generates_match_sequential_ones(engine: AsyncEngine) -> None:
    texts = [f"Concurrent request {i} " * (1 + i % 4) for i in range(8)]
    together = await asyncio.gather(*(collect(engine, t, f"c{i}") for i, t in enumerate(texts)))
    for i, (text, outs) in enumerate(zip(texts, together, strict=True)):
        assert outs[-1].finished and not any(o.finished for o in outs[:-1])
        # Deltas: every token exactly once (a consumer that fell behind gets them merged).
        assert all(o.outputs[0].token_ids for o in outs)
        assert sum(len(o.outputs[0].token_ids) for o in outs) == 12
        alone = await collect(engine, text, f"s{i}")
        assert total(alone).outputs[0].token_ids == total(outs).outputs[0].token_ids
    stats = engine.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    assert engine.is_healthy and engine.errored is None


async def test_a_slow_consumer_gets_the_steps_it_missed_merged(engine: AsyncEngine) -> None:
    prompt = build_text_prompt(engine.tokenizer, "a slow reader")
    outs = []
    async for out in engine.generate(prompt, params(60), "slow"):
        outs.append(out)
        if len(outs) == 1:
            await wait_until(lambda: engine.stats()["num_requests"] == 0)  # all steps done
            await asyncio.sleep(0.1)  # and delivered
    # 59 steps' deltas waited in the stream: merged, none dropped.
    assert len(outs) == 2 and outs[-1].finished
    merged = outs[1].outputs[0]
    assert len(merged.token_ids) == 59 and merged.finish_reason == "length"
    alone = await collect(engine, "a slow reader", "fast", n=60)
    assert len(alone) > 2
    assert total(outs).outputs[0].token_ids == total(alone).outputs[0].token_ids
    assert total(outs).outputs[0].text == total(alone).outputs[0].text


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


async def test_each_request_is_aborted_once(engine: AsyncEngine) -> None:
    """However the request ends (consumer cancelled, explicit aborts before and after, a
    finished request aborted late), the engine thread sees at most one abort per request."""
    aborted: list[str] = []
    abort_request = engine.engine.abort_request

    def counting_abort(request_id: str) -> Any:
        aborted.append(request_id)
        return abort_request(request_id)

    engine.engine.abort_request = counting_abort  # type: ignore[method-assign]
    started = asyncio.Event()

    async def consume(request_id: str) -> None:
        prompt = build_text_prompt(engine.tokenizer, "abort me once")
        async for _ in engine.generate(prompt, params(200), request_id):
            started.set()

    task = asyncio.create_task(consume("cancelled"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    engine.abort("cancelled")  # what the server does when its handler leaves
    started.clear()
    task = asyncio.create_task(consume("twice"))
    await started.wait()
    engine.abort("twice")
    engine.abort("twice")
    await task  # ends with the abort's final output
    engine.abort("twice")
    await collect(engine, "finished", "finished")
    engine.abort("finished")
    await wait_until(lambda: engine.stats()["num_requests"] == 0)
    await asyncio.sleep(0.1)
    assert sorted(aborted) == ["cancelled", "twice"]


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


# ---- engine-thread faults: every request in flight fails, the engine is dead, nothing hangs -----

# Room for four 200-token requests without preemption, so none finishes before the fault.
ROOMY = {"num_kv_blocks": 128}
NUM_WHOLE = NUM_STREAMED = 2


class ArmedFault:
    """A fault injector that raises at ``stage`` once the test arms it."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.armed = threading.Event()

    def __call__(self, stage: str, step: int) -> None:
        if stage == self.stage and self.armed.is_set():
            raise RuntimeError(f"injected fault at {stage}, step {step}")


async def stream(engine: AsyncEngine, request_id: str, seen: list[Any]) -> None:
    prompt = build_text_prompt(engine.tokenizer, f"streamed {request_id}")
    async for out in engine.generate(prompt, params(200), request_id):
        seen.append(out)


async def start_in_flight(engine: AsyncEngine) -> tuple[list[asyncio.Task[Any]], list[list[Any]]]:
    """Requests collected whole and streamed ones, all running and streams past their first
    token; returns their tasks and each stream's outputs so far."""
    seen: list[list[Any]] = [[] for _ in range(NUM_STREAMED)]
    tasks = [
        asyncio.create_task(collect(engine, f"whole {i}", f"whole-{i}", n=200))
        for i in range(NUM_WHOLE)
    ]
    tasks += [
        asyncio.create_task(stream(engine, f"streamed-{i}", seen[i])) for i in range(NUM_STREAMED)
    ]
    await wait_until(
        lambda: all(seen) and engine.stats()["num_running"] == NUM_WHOLE + NUM_STREAMED
    )
    return tasks, seen


async def assert_all_failed_dead(tasks: list[asyncio.Task[Any]]) -> list[BaseException]:
    """Every task ends within seconds (a hang fails here) with EngineDeadError."""
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=15)
    assert [type(r) for r in results] == [EngineDeadError] * len(tasks), results
    return results


async def assert_dead_and_shuts_down(engine: AsyncEngine) -> None:
    assert not engine.is_healthy and engine.errored is not None
    with pytest.raises(EngineDeadError):
        await asyncio.wait_for(collect(engine, "after death", "late"), timeout=5)
    assert engine.stats()["num_total_blocks"] > 0  # stats still answer
    start = time.monotonic()
    await asyncio.to_thread(engine.shutdown, 10.0)
    assert time.monotonic() - start < 2.0  # the engine thread had exited: nothing to wait for


@pytest.mark.parametrize("stage", FAULT_STAGES)
async def test_a_fault_at_any_stage_fails_every_request_and_kills_the_engine(
    tiny_llama_dir: Path, stage: str
) -> None:
    fault = ArmedFault(stage)
    engine = AsyncEngine(config(tiny_llama_dir).model_copy(update=ROOMY), fault_injector=fault)
    engine.start()
    try:
        tasks, seen = await start_in_flight(engine)
        fault.armed.set()
        if stage == "inbox":
            engine.abort("no-such-request")  # the inbox is drained only when a command comes
        results = await assert_all_failed_dead(tasks)
        assert all(isinstance(r.__cause__, EngineFatalError) for r in results)
        assert f"the {stage} stage" in str(engine.errored)
        assert all(not out.finished for outs in seen for out in outs)
        await assert_dead_and_shuts_down(engine)
    finally:
        engine.shutdown(timeout=10.0)


async def test_a_failure_inside_delivery_still_fails_every_stream(
    tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the hook before delivery: delivery itself breaks, so failing the streams must not go
    through it; a consumer whose event loop is already closed does not stop the others."""
    engine = AsyncEngine(config(tiny_llama_dir).model_copy(update=ROOMY))
    engine.start()
    deliver = engine._deliver_all
    broken = threading.Event()

    def breaking_deliver(items: Any) -> None:
        if broken.is_set():
            raise RuntimeError("delivery broke")
        deliver(items)

    monkeypatch.setattr(engine, "_deliver_all", breaking_deliver)
    try:
        orphan = await asyncio.to_thread(start_on_a_closed_loop, engine)
        tasks, _ = await start_in_flight(engine)
        broken.set()
        await assert_all_failed_dead(tasks)
        assert "delivery broke" in str(engine.errored)
        await assert_dead_and_shuts_down(engine)
        assert orphan.is_closed()
    finally:
        engine.shutdown(timeout=10.0)


def start_on_a_closed_loop(engine: AsyncEngine) -> asyncio.AbstractEventLoop:
    """A request whose consumer's event loop closed without closing the request's iterator."""
    loop = asyncio.new_event_loop()
    prompt = build_text_prompt(engine.tokenizer, "orphan")
    outputs = engine.generate(prompt, params(200), "orphan")
    loop.run_until_complete(outputs.__anext__())
    loop.close()
    return loop


async def test_a_failing_abort_kills_the_engine(tiny_llama_dir: Path) -> None:
    """An abort that raises leaves the engine's bookkeeping half done: fatal, not ignored."""
    engine = AsyncEngine(config(tiny_llama_dir).model_copy(update=ROOMY))

    def broken_abort(request_id: str) -> None:
        raise RuntimeError("abort broke")

    engine.engine.abort_request = broken_abort  # type: ignore[method-assign]
    engine.start()
    try:
        tasks, _ = await start_in_flight(engine)
        tasks[0].cancel()  # the consumer goes away: generate submits the abort
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        await assert_all_failed_dead(tasks[1:])
        assert "abort broke" in str(engine.errored)
        await assert_dead_and_shuts_down(engine)
    finally:
        engine.shutdown(timeout=10.0)


async def test_a_request_that_cannot_be_added_fails_alone(tiny_llama_dir: Path) -> None:
    """add_request sees the caller's input, so its failure fails that request only."""
    engine = AsyncEngine(config(tiny_llama_dir))
    add = engine.engine.add_request

    def picky_add(request_id: str, *args: Any, **kwargs: Any) -> None:
        if request_id == "bad":
            raise RuntimeError("cannot add")
        add(request_id, *args, **kwargs)

    engine.engine.add_request = picky_add  # type: ignore[method-assign]
    engine.start()
    try:
        good = asyncio.create_task(collect(engine, "fine", "good"))
        with pytest.raises(RuntimeError, match="cannot add"):
            await asyncio.wait_for(collect(engine, "doomed", "bad"), timeout=10)
        outs = await asyncio.wait_for(good, timeout=30)
        assert outs[-1].finished and engine.is_healthy
    finally:
        engine.shutdown()


async def test_failed_steps_in_a_row_kill_the_engine(tiny_llama_dir: Path) -> None:
    engine = AsyncEngine(config(tiny_llama_dir))
    engine.engine.runner = FlakyRunner(engine.engine.runner, set(range(1, 100)))
    engine.start()
    try:
        for i in range(MAX_CONSECUTIVE_STEP_FAILURES):
            assert engine.is_healthy
            with pytest.raises(EngineStepError):
                await asyncio.wait_for(collect(engine, "doomed", f"d{i}"), timeout=10)
        await wait_until(lambda: not engine.is_healthy)
        assert isinstance(engine.errored, EngineDeadError)
        assert isinstance(engine.errored.__cause__, EngineStepError)
        await assert_dead_and_shuts_down(engine)
    finally:
        engine.shutdown(timeout=10.0)


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
    count, and threads that start kernels later get one (pe_engine/models/kernel_threads.py)."""
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
        fault_injector=lambda stage, step: seen.append(torch.get_num_threads()),
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
