"""Request-controlled chat rendering on the real server (issue 17, item 1; catalogue row 49).

A request's own `chat_template` is refused unless the server trusts request templates; every
render runs in a worker process within a time and size budget, so a hostile template costs its
own request a 400 and never stalls other requests or the drain on SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_harness import MODEL, ServerProcess, assert_error, wait_until

from conftest import module_server, start_server
from pe_server.serve import SHUTDOWN_GRACE_S

# Two nested loops of 10^5: about 10^10 iterations, hours of rendering.
DOS_TEMPLATE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"
MEMORY_BOMB = "{{ 'a' * 10**10 }}"
RENDER_TIMEOUT = 1.0
# Lists content parts with ';' when it gets them, says S: when it gets one string.
SERVER_TEMPLATE = (
    "{% for m in messages %}{% if m.content is string %}S:{{ m.content }}"
    "{% else %}L:{% for p in m.content %}{{ p.text }};{% endfor %}{% endif %}|{% endfor %}"
)
HI = [{"role": "user", "content": "hi"}]


trusting = module_server(
    "trusting",
    [
        "--trust-request-chat-template",
        "--chat-render-timeout", str(RENDER_TIMEOUT),
        "--chat-template-content-format", "string",
        "--max-model-len", "256",
    ],
    chat_template=SERVER_TEMPLATE,
)  # fmt: skip


def chat(server: ServerProcess, **fields: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": HI, "max_tokens": 2, **fields}
    return server.post("/v1/chat/completions", json=body)


def tokenize_chat(server: ServerProcess, messages: Any, **fields: Any) -> list[int]:
    body = {"model": MODEL, "messages": messages, "add_generation_prompt": False, **fields}
    response = server.post("/tokenize", json=body)
    assert response.status_code == 200, response.text
    return list(response.json()["tokens"])


def text_ids(server: ServerProcess, text: str) -> list[int]:
    body = {"model": MODEL, "prompt": text, "add_special_tokens": False}
    return list(server.post("/tokenize", json=body).json()["tokens"])


# ---- the default server: request templates refused ------------------------------------------


def test_request_template_is_refused_fast_by_default(server: ServerProcess) -> None:
    start = time.monotonic()
    response = chat(server, chat_template=DOS_TEMPLATE)
    assert time.monotonic() - start < 1.0
    error = assert_error(response, 400, "untrusted_chat_template")
    assert error["param"] == "chat_template"
    assert "--trust-request-chat-template" in error["message"]


def test_tokenize_refuses_request_template_too(server: ServerProcess) -> None:
    body = {"model": MODEL, "messages": HI, "chat_template": "{{ messages }}"}
    assert_error(server.post("/tokenize", json=body), 400, "untrusted_chat_template")


@pytest.mark.parametrize("name", ["tokenize", "add_generation_prompt", "messages", "tools"])
def test_template_kwargs_may_not_set_renderer_arguments(server: ServerProcess, name: str) -> None:
    response = chat(server, chat_template_kwargs={name: False})
    error = assert_error(response, 400, "invalid_parameter")
    assert error["param"] == f"chat_template_kwargs.{name}"


def test_template_kwargs_the_template_does_not_read_are_dropped(server: ServerProcess) -> None:
    plain = tokenize_chat(server, HI)
    assert tokenize_chat(server, HI, chat_template_kwargs={"enable_thinking": False}) == plain
    assert chat(server, chat_template_kwargs={"unused": [1, 2, 3]}).status_code == 200


def test_template_kwargs_are_size_bounded(server: ServerProcess) -> None:
    response = chat(server, chat_template_kwargs={"big": "x" * (65 * 1024)})
    error = assert_error(response, 400, "invalid_parameter")
    assert error["param"] == "chat_template_kwargs"


# ---- a trusting server: budgets -------------------------------------------------------------


def test_server_template_and_forced_content_format(trusting: ServerProcess) -> None:
    # --chat-template (a file) renders every chat; --chat-template-content-format string joins
    # the parts with "\n" although the template loops over parts (auto would say "openai").
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    ids = tokenize_chat(trusting, [{"role": "user", "content": parts}])
    assert ids == text_ids(trusting, "S:a\nb|")


def test_trusted_request_template_renders_with_its_kwargs(trusting: ServerProcess) -> None:
    template = "{% for m in messages %}[{{ m.content }}|{{ flag }}]{% endfor %}"
    ids = tokenize_chat(trusting, HI, chat_template=template, chat_template_kwargs={"flag": "F"})
    assert ids == text_ids(trusting, "[hi|F]")


def test_hostile_template_times_out_without_stalling_others(trusting: ServerProcess) -> None:
    results: dict[str, Any] = {}

    def hostile() -> None:
        start = time.monotonic()
        results["hostile"] = chat(trusting, chat_template=DOS_TEMPLATE)
        results["hostile_s"] = time.monotonic() - start

    thread = threading.Thread(target=hostile)
    thread.start()
    time.sleep(0.3)  # the render is running
    start = time.monotonic()
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4}
    plain = trusting.post("/v1/completions", json=body)
    plain_s = time.monotonic() - start
    plain_chat = chat(trusting)  # the other worker renders it
    thread.join(30)
    assert plain.status_code == 200, plain.text
    assert plain_chat.status_code == 200, plain_chat.text
    assert plain_s < RENDER_TIMEOUT, plain_s
    error = assert_error(results["hostile"], 400, "chat_template_timeout")
    assert error["param"] == "messages"
    assert results["hostile_s"] < RENDER_TIMEOUT + 2.0
    # The killed worker was replaced: rendering still works.
    assert chat(trusting).status_code == 200


def test_memory_bomb_template_is_refused(trusting: ServerProcess) -> None:
    before = trusting.rss_bytes()
    assert_error(chat(trusting, chat_template=MEMORY_BOMB), 400, "chat_template_too_large")
    assert trusting.rss_bytes() - before < 50 * 2**20
    assert chat(trusting).status_code == 200


def test_oversized_render_is_refused(trusting: ServerProcess) -> None:
    # 256 tokens of context x 32 characters: a 100,000-character render is over budget.
    response = chat(trusting, chat_template="{{ 'a' * 100000 }}")
    assert_error(response, 400, "chat_template_too_large")


@pytest.mark.parametrize("template", ["{{ raise_exception('no') }}", "{% for %}", "{{ x.y.z }}"])
def test_template_error_is_a_400(trusting: ServerProcess, template: str) -> None:
    assert_error(chat(trusting, chat_template=template), 400, "invalid_chat_template")


def test_sigterm_during_a_hostile_render_exits_within_the_drain(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    flags = ["--trust-request-chat-template", "--chat-render-timeout", "30", "--drain-timeout", "2"]
    server = start_server(tiny_llama_dir, tmp_path, "drain", flags)

    def hostile() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server goes away under it
            chat(server, chat_template=DOS_TEMPLATE)

    thread = threading.Thread(target=hostile)
    thread.start()
    time.sleep(0.5)
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(30)
    # The drain deadline, then aiohttp's grace for handlers (twice), as for any request.
    assert time.monotonic() - start < 2.0 + 2 * SHUTDOWN_GRACE_S + 3.0
    assert server.proc.returncode == 0
    server.stop()
    thread.join(30)


def test_no_free_renderer_within_the_budget_is_a_503(tiny_llama_dir: Path, tmp_path: Path) -> None:
    flags = ["--trust-request-chat-template", "--chat-render-workers", "1"]
    flags += ["--chat-render-timeout", "1"]
    server = start_server(tiny_llama_dir, tmp_path, "one-worker", flags)
    try:
        assert chat(server).status_code == 200  # the worker is up
        # The first holds the only worker for its whole budget; the others wait one budget for
        # it (its replacement starts only after the kill) and are turned away.
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(chat, server, chat_template=DOS_TEMPLATE)
            time.sleep(0.2)
            others = [pool.submit(chat, server, chat_template=DOS_TEMPLATE) for _ in range(2)]
            responses = [first.result(), *(f.result() for f in others)]
        assert_error(responses[0], 400, "chat_template_timeout")
        busy = [r for r in responses[1:] if r.status_code == 503]
        assert busy, [r.status_code for r in responses]
        error = assert_error(busy[0], 503, "chat_render_busy")
        assert busy[0].headers["Retry-After"] == "1", error
        assert wait_until(lambda: chat(server).status_code == 200, 10.0)
    finally:
        server.stop()
