"""Chat templates rendered in worker processes, each render within a time and memory budget.

A chat template is a Jinja program that a request steers (its messages, its
``chat_template_kwargs`` and, on a trusting server, the template itself): two nested loops run
for hours and a string product fills the memory. A render on a thread can be neither stopped nor
kept from holding the GIL that the engine thread and the event loop need. Here each render runs
in a worker process forked from a forkserver (transformers preloaded), niced below the engine and
with a bounded data segment; a render past its deadline is killed with its worker, and a fresh
worker takes its place.

The parent never unpickles what a worker sends back: results are UTF-8 bytes behind a status.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import pickle
import queue
import resource
import threading
from dataclasses import dataclass
from typing import Any

from pe_common.errors import PEValidationError

log = logging.getLogger("pe_engine")

PROMPT_EMBEDS_TOKEN = "<prompt_embeds>"
# Imported once by the forkserver so that a new worker starts in milliseconds; names missing in
# the installed transformers are skipped by multiprocessing.
PRELOAD = (
    "pe_engine.inputs.chat_render",
    "jinja2",
    "transformers.utils.chat_template_utils",
    "transformers.tokenization_utils_tokenizers",
    "transformers.tokenization_utils_fast",
)
# Seconds a new worker may take to load its tokenizer before it is given up.
WORKER_START_TIMEOUT_S = 120.0
_OK, _ERROR = b"ok:", b"er:"


class ChatRenderBusyError(RuntimeError):
    """Every render worker stayed busy for a whole render budget (the server answers 503)."""


@dataclass(frozen=True)
class RenderLimits:
    """Budget of one render: wall time, characters out, memory the worker may add."""

    timeout_s: float = 2.0
    max_output_chars: int = 4 * 2**20
    max_memory_bytes: int = 1 * 2**30


# The codes a render can fail with, and their fixed messages (never the template's own text).
RENDER_ERRORS = {
    "chat_template_timeout": "Rendering the chat template took longer than its time budget.",
    "chat_template_too_large": "The rendered chat exceeds the render size or memory budget.",
    "invalid_chat_template": "The chat template could not be applied to these messages.",
}


def render_error(code: str) -> PEValidationError:
    """The 400 for ``code``; a code this module does not know reads as an invalid template."""
    code = code if code in RENDER_ERRORS else "invalid_chat_template"
    return PEValidationError(RENDER_ERRORS[code], code=code, param="messages")


def with_sentinel(tokenizer: Any) -> tuple[Any, int]:
    """A copy of ``tokenizer`` with ``<prompt_embeds>`` as one special token, and its id."""
    import copy

    from tokenizers import AddedToken

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_tokens([AddedToken(PROMPT_EMBEDS_TOKEN, special=True)], special_tokens=True)
    ids = tokenizer.encode(PROMPT_EMBEDS_TOKEN, add_special_tokens=False)
    if len(ids) != 1:
        raise RuntimeError("the <prompt_embeds> sentinel did not encode to one token")
    return tokenizer, ids[0]


# The renderer's own arguments: a request's chat_template_kwargs may not set them.
RENDERER_ARGS = frozenset(
    {
        "conversation", "messages", "tools", "documents", "chat_template", "tokenize",
        "add_generation_prompt", "continue_final_message", "padding", "truncation",
        "max_length", "return_tensors", "return_dict", "return_assistant_tokens_mask",
        "tokenizer_kwargs", "sanitize_control_tokens",
    }
)  # fmt: skip


def render_chat(
    tokenizer: Any,
    conversation: list[dict[str, Any]],
    options: dict[str, Any],
    template_kwargs: dict[str, Any] | None,
) -> str:
    """What every renderer runs: the tokenizer's own template application, untokenized.

    ``options`` are the renderer's arguments; of ``template_kwargs`` only the names the template
    reads are passed (as vLLM does), so they can neither override an argument nor reach the
    tokenizer.
    """
    kwargs = dict(options)
    if template_kwargs:
        source = tokenizer.get_chat_template(options.get("chat_template"), options.get("tools"))
        used = template_variables(source)
        kwargs.update({k: v for k, v in template_kwargs.items() if k in used})
    return str(tokenizer.apply_chat_template(conversation, tokenize=False, **kwargs))


@functools.lru_cache(maxsize=32)
def template_variables(source: str) -> frozenset[str]:
    """Names a template reads that it does not set itself."""
    import jinja2
    from jinja2 import meta

    return frozenset(meta.find_undeclared_variables(jinja2.Environment().parse(source)))


class _Worker:
    __slots__ = ("conn", "process")

    def __init__(self, process: Any, conn: Any) -> None:
        self.process = process
        self.conn = conn

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(Exception):
            self.process.join(1.0)


class ChatRenderPool:
    """``num_workers`` render processes; ``render`` is thread-safe and blocks its caller only.

    A caller waits at most one render budget for a free worker (then
    :class:`ChatRenderBusyError`) and one budget for its render (then a 400
    ``chat_template_timeout``, and the worker is replaced).
    """

    def __init__(
        self, tokenizer: Any, *, num_workers: int = 2, limits: RenderLimits | None = None
    ) -> None:
        self.limits = limits or RenderLimits()
        self.num_workers = num_workers
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(PRELOAD))
        # Pickled once: a new worker must not cost the parent (the engine's process) a pickling.
        self._tokenizer_bytes = pickle.dumps(tokenizer)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        # The forkserver takes seconds to import transformers: start it off the caller's path.
        self._started = threading.Event()
        threading.Thread(target=self._start, name="pe-chat-render-start", daemon=True).start()

    def render(
        self,
        conversation: list[dict[str, Any]],
        options: dict[str, Any],
        template_kwargs: dict[str, Any] | None,
        *,
        embeds: bool,
    ) -> str:
        if self._closed:
            raise ChatRenderBusyError("the chat renderer is shut down")
        self._started.wait(WORKER_START_TIMEOUT_S)
        try:
            worker = self._idle.get(timeout=self.limits.timeout_s)
        except queue.Empty:
            raise ChatRenderBusyError("every chat template renderer is busy") from None
        try:
            worker.conn.send((conversation, options, template_kwargs, embeds))
            if not worker.conn.poll(self.limits.timeout_s):
                self._replace(worker)
                raise render_error("chat_template_timeout")
            reply = worker.conn.recv_bytes(self._max_reply_bytes())
        except PEValidationError:
            raise
        except (OSError, EOFError, ValueError):  # the worker died, or its reply is too long
            self._replace(worker)
            raise render_error("chat_template_too_large") from None
        status, body = reply[:3], reply[3:]
        if status == _OK:
            self._idle.put(worker)
            return body.decode("utf-8")
        code = body.decode("ascii", "replace")
        if code == "chat_template_too_large":  # a MemoryError may have left the worker damaged
            self._replace(worker)
        else:
            self._idle.put(worker)
        raise render_error(code)

    def close(self) -> None:
        """Kill every worker; later renders raise :class:`ChatRenderBusyError`."""
        with self._lock:
            self._closed = True
            workers, self._all = list(self._all), set()
        for worker in workers:
            worker.kill()

    def _start(self) -> None:
        try:
            for _ in range(self.num_workers):
                self._spawn()
            # Wait for the first worker, so that early requests queue without spending budget.
            first = self._idle.get(timeout=WORKER_START_TIMEOUT_S)
            self._idle.put(first)
        except Exception:
            log.exception("the chat template render workers did not start")
        finally:
            self._started.set()

    def _max_reply_bytes(self) -> int:
        return 4 * self.limits.max_output_chars + 16  # UTF-8: at most 4 bytes a character

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)
        self._spawn()

    def _spawn(self) -> None:
        """Start a worker; it joins the idle queue once its tokenizer is loaded."""
        with self._lock:
            if self._closed:
                return
            parent, child = self._context.Pipe()
            process = self._context.Process(
                target=_worker_main,
                args=(child, self._tokenizer_bytes, self.limits),
                name="pe-chat-render",
                daemon=True,
            )
            process.start()
            child.close()
            worker = _Worker(process, parent)
            self._all.add(worker)
        threading.Thread(target=self._await_ready, args=(worker,), daemon=True).start()

    def _await_ready(self, worker: _Worker) -> None:
        try:
            ready = worker.conn.poll(WORKER_START_TIMEOUT_S) and worker.conn.recv_bytes(16) == _OK
        except (OSError, EOFError):
            ready = False
        if ready and not self._closed:
            self._idle.put(worker)
            return
        if not self._closed:
            log.error("a chat template render worker failed to start")
        worker.kill()
        with self._lock:
            self._all.discard(worker)


def _worker_main(conn: Any, tokenizer_bytes: bytes, limits: RenderLimits) -> None:
    """The worker process: load, say ready, then render one job at a time until the pipe ends."""
    with contextlib.suppress(OSError):
        os.nice(19)  # the engine's kernels first; an honest render takes milliseconds
    tokenizer = pickle.loads(tokenizer_bytes)  # the parent's own bytes
    tokenizers: dict[bool, Any] = {False: tokenizer}
    _limit_memory(limits.max_memory_bytes)
    conn.send_bytes(_OK)
    while True:
        try:
            conversation, options, template_kwargs, embeds = conn.recv()
        except (EOFError, OSError):
            return
        if embeds and True not in tokenizers:
            tokenizers[True] = with_sentinel(tokenizer)[0]
        job = (conversation, options, template_kwargs)
        conn.send_bytes(_render_reply(tokenizers[embeds], job, limits))


def _render_reply(tokenizer: Any, job: tuple[Any, Any, Any], limits: RenderLimits) -> bytes:
    try:
        text = render_chat(tokenizer, *job)
    except MemoryError:
        return _ERROR + b"chat_template_too_large"
    except Exception:  # template errors, raise_exception(), wrong types: the template's fault
        return _ERROR + b"invalid_chat_template"
    if len(text) > limits.max_output_chars:
        return _ERROR + b"chat_template_too_large"
    return _OK + text.encode("utf-8", "surrogatepass")


def _limit_memory(budget: int) -> None:
    """Cap the data segment at what the worker holds now plus ``budget`` (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        current = int(fields["VmData"].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (current + budget, current + budget))
    except (OSError, KeyError, ValueError):
        log.warning("could not bound the chat render worker's memory")
