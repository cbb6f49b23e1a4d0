"""An assistant message's `reasoning` / `reasoning_content` on the real server (issue 18).

As vLLM: the field is a string or one `prompt_embeds` part; the chat template gets it under
both names and decides whether to render it; an embeds part in it is decoded, checked and
spliced like a content part, so a bad one is vLLM's 400 and `prompt_tokens` counts its rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_harness import MODEL, EmbeddingTable, ServerProcess, assert_error

from conftest import start_server

REASONING = "The Eiffel Tower is a lattice tower in Paris"
ANSWER = "In Paris"
# ChatML with the thinking of earlier assistant turns, as reasoning models' templates show it.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.reasoning %}<think>\n{{ m.reasoning }}\n</think>\n{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The same under vLLM's legacy name (Qwen3's and DeepSeek's templates read this one).
LEGACY_TEMPLATE = THINKING_TEMPLATE.replace("m.reasoning", "m.reasoning_content")
# Drops earlier thinking, as many templates do.
PLAIN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Shows the thinking twice: one embeds part would be spliced twice, which vLLM refuses.
TWICE_TEMPLATE = THINKING_TEMPLATE.replace(
    "{{ m.reasoning }}", "{{ m.reasoning }}{{ m.reasoning_content }}"
)
MISSING_DATA = (
    "prompt_embeds content part requires a non-empty `data` field with base64-encoded tensor bytes."
)


@pytest.fixture(scope="module", params=["native", "transformers"])
def server(
    request: pytest.FixtureRequest, tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    backend = request.param
    log_dir = tmp_path_factory.mktemp(f"reasoning-{backend}")
    template = log_dir / "thinking.jinja"
    template.write_text(THINKING_TEMPLATE)
    flags = [
        "--enable-prompt-embeds",
        "--chat-template", str(template),
        "--trust-request-chat-template",
        "--max-model-len", "256",
    ]  # fmt: skip
    proc = start_server(tiny_llama_dir, log_dir, f"reasoning-{backend}", flags, backend=backend)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def table(tiny_llama_dir: Path) -> EmbeddingTable:
    return EmbeddingTable(tiny_llama_dir)


def embeds(table: EmbeddingTable, text: str) -> dict[str, Any]:
    return {"type": "prompt_embeds", "data": table.payload(text)}


def turns(**assistant_fields: Any) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Where is the tower"},
        {"role": "assistant", "content": ANSWER, **assistant_fields},
        {"role": "user", "content": "Say it again"},
    ]


def post_chat(server: ServerProcess, messages: list[dict[str, Any]], **fields: Any) -> Any:
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": 6,
        "temperature": 0.0,
        "ignore_eos": True,
        "logprobs": True,
        **fields,
    }
    return server.post("/v1/chat/completions", json=body)


def chat(server: ServerProcess, messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    response = post_chat(server, messages, **fields)
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_same_answer(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"]
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    logprobs = [[e["logprob"] for e in r["choices"][0]["logprobs"]["content"]] for r in (a, b)]
    assert logprobs[0] == pytest.approx(logprobs[1], abs=1e-4)


def assert_shows_reasoning(server: ServerProcess, table: EmbeddingTable, res: Any) -> None:
    """``res`` counts the reasoning's tokens (and its <think> tags) on top of the turns."""
    without = chat(server, turns())["usage"]["prompt_tokens"]
    num_reasoning = len(table.tokenizer.encode(REASONING, add_special_tokens=False))
    assert res["usage"]["prompt_tokens"] >= without + num_reasoning + 2


def test_reasoning_is_rendered_and_counted(server: ServerProcess, table: EmbeddingTable) -> None:
    assert_shows_reasoning(server, table, chat(server, turns(reasoning=REASONING)))


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_embedded_reasoning_answers_as_its_text(
    server: ServerProcess, table: EmbeddingTable, field: str
) -> None:
    as_text = chat(server, turns(reasoning=REASONING))
    as_embeds = chat(server, turns(**{field: embeds(table, REASONING)}))
    assert_same_answer(as_embeds, as_text)
    assert_shows_reasoning(server, table, as_embeds)


def test_reasoning_and_content_embeds_keep_their_places(
    server: ServerProcess, table: EmbeddingTable
) -> None:
    # The template shows the reasoning before the content; the tensors follow the template.
    as_text = chat(server, turns(reasoning=REASONING))
    mixed = turns(reasoning=embeds(table, REASONING))
    mixed[1]["content"] = [embeds(table, ANSWER)]
    mixed[0]["content"] = [embeds(table, "Where is the tower")]
    assert_same_answer(chat(server, mixed), as_text)
    assert_shows_reasoning(server, table, as_text)


def test_reasoning_wins_over_reasoning_content(
    server: ServerProcess, table: EmbeddingTable
) -> None:
    only = chat(server, turns(reasoning=REASONING))
    # the legacy field is not read (not even decoded) when `reasoning` is there
    both = chat(server, turns(reasoning=REASONING, reasoning_content={"type": "prompt_embeds"}))
    assert_same_answer(both, only)
    assert_shows_reasoning(server, table, both)


def test_templates_get_reasoning_under_both_names(
    server: ServerProcess, table: EmbeddingTable
) -> None:
    by_new_name = chat(server, turns(reasoning=embeds(table, REASONING)))
    legacy_template = chat(
        server, turns(reasoning=embeds(table, REASONING)), chat_template=LEGACY_TEMPLATE
    )
    assert_same_answer(legacy_template, by_new_name)
    assert_shows_reasoning(server, table, legacy_template)
    response = post_chat(
        server, turns(reasoning=embeds(table, REASONING)), chat_template=TWICE_TEMPLATE
    )
    error = assert_error(response, 400, "invalid_chat_template")
    assert error["param"] == "messages"
    assert "each placeholder must appear at most once" in error["message"]


def test_a_template_that_drops_reasoning_drops_its_tensor(
    server: ServerProcess, table: EmbeddingTable
) -> None:
    plain = chat(server, turns(), chat_template=PLAIN_TEMPLATE)
    dropped = chat(server, turns(reasoning=embeds(table, REASONING)), chat_template=PLAIN_TEMPLATE)
    assert_same_answer(dropped, plain)
    # still decoded and checked first: a bad one is refused whatever the template shows
    response = post_chat(
        server, turns(reasoning={"type": "prompt_embeds"}), chat_template=PLAIN_TEMPLATE
    )
    assert_error(response, 400, "missing_parameter")


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
@pytest.mark.parametrize(
    "part", [{"type": "prompt_embeds"}, {"type": "prompt_embeds", "data": ""}], ids=["no", "empty"]
)
def test_missing_or_empty_data_is_vllms_400(
    server: ServerProcess, field: str, part: dict[str, Any]
) -> None:
    error = assert_error(post_chat(server, turns(**{field: part})), 400, "missing_parameter")
    assert (error["message"], error["param"]) == (MISSING_DATA, "prompt_embeds")


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_bad_base64_is_a_400(server: ServerProcess, field: str) -> None:
    part = {"type": "prompt_embeds", "data": "not_valid_base64!!"}
    content_error = assert_error(
        post_chat(server, [{"role": "user", "content": [part]}]), 400, "invalid_base64"
    )
    error = assert_error(post_chat(server, turns(**{field: part})), 400, "invalid_base64")
    assert error == content_error  # the same answer as the same part in `content`
    assert error["param"] == "prompt_embeds"


def test_wrong_shapes_name_their_path(server: ServerProcess, table: EmbeddingTable) -> None:
    as_list = turns(reasoning=[embeds(table, REASONING)])
    error = assert_error(post_chat(server, as_list), 400, "invalid_parameter")
    assert error["param"] == "messages"
    assert error["message"].endswith("- at `$.messages[1].reasoning`")
    half = {**embeds(table, REASONING), "dtype": "float32"}
    error = assert_error(post_chat(server, turns(reasoning_content=half)), 400, "invalid_parameter")
    assert error["message"].endswith("- at `$.messages[1].reasoning_content`")


def test_reserved_placeholder_in_reasoning_is_refused(server: ServerProcess) -> None:
    response = post_chat(server, turns(reasoning="x <prompt_embeds> y"))
    error = assert_error(response, 400, "reserved_placeholder")
    assert error["param"] == "messages"


@pytest.mark.parametrize("role", ["user", "system"])
def test_other_roles_reasoning_is_ignored(server: ServerProcess, role: str) -> None:
    # vLLM passes reasoning to the template for assistant messages only and reads no other's
    messages = turns()
    index = 0 if role == "user" else 2
    messages[index] = {**messages[index], "role": role, "reasoning": REASONING}
    reference = turns()
    reference[index] = {**reference[index], "role": role}
    assert_same_answer(chat(server, messages), chat(server, reference))
    messages[index]["reasoning"] = {"type": "prompt_embeds", "data": "not_valid_base64!!"}
    assert_same_answer(chat(server, messages), chat(server, reference))


def test_tokenize_counts_embedded_reasoning(server: ServerProcess, table: EmbeddingTable) -> None:
    def count(messages: list[dict[str, Any]]) -> int:
        response = server.post("/tokenize", json={"model": MODEL, "messages": messages})
        assert response.status_code == 200, response.text
        return int(response.json()["count"])

    assert count(turns(reasoning=embeds(table, REASONING))) == count(turns(reasoning=REASONING))


def test_stream_with_embedded_reasoning(server: ServerProcess, table: EmbeddingTable) -> None:
    messages = turns(reasoning=embeds(table, REASONING))
    done = chat(server, messages)
    body = {"model": MODEL, "messages": messages, "max_tokens": 6, "temperature": 0.0}
    body |= {"ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    url = f"{server.root}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=server.headers, timeout=60) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content == done["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"]["prompt_tokens"] == done["usage"]["prompt_tokens"]
