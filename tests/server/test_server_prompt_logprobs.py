"""prompt_logprobs, echo with logprobs and best_of > n through the real server, against
transformers on the same weights (the engine computes them; these check the wire layout)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from server_harness import ServerProcess

from conftest import MODEL, Embedder
from pe_common.codec import encode_prompt_embeds

TEXT = "The quick brown fox jumps over the lazy dog"

pytestmark = pytest.mark.skipif(
    os.environ.get("PE_TEST_BACKEND", "native") != "native",
    reason="prompt_logprobs and best_of > n are native-backend features",
)


@pytest.fixture(scope="module")
def hf(tiny_llama_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompt_ids(server: ServerProcess) -> list[int]:
    r = server.post("/tokenize", json={"model": MODEL, "prompt": TEXT})
    r.raise_for_status()
    return list(r.json()["tokens"])


def reference(hf: Any, ids: list[int]) -> torch.Tensor:
    """log_softmax of transformers' logits; row p - 1 scores prompt position p."""
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0], dim=-1)


def post(server: ServerProcess, route: str, body: dict[str, Any]) -> httpx.Response:
    return server.post(f"/v1/{route}", json={"model": MODEL, **body}, timeout=60)


def test_completion_prompt_logprobs_match_transformers(
    server: ServerProcess, hf: Any, prompt_ids: list[int]
) -> None:
    r = post(server, "completions", {"prompt": TEXT, "max_tokens": 2, "prompt_logprobs": 3})
    assert r.status_code == 200, r.text
    entries = r.json()["choices"][0]["prompt_logprobs"]
    ref = reference(hf, prompt_ids)
    assert len(entries) == len(prompt_ids) and entries[0] is None
    for p in range(1, len(prompt_ids)):
        entry = entries[p]
        token = prompt_ids[p]
        assert str(token) in entry  # the prompt token itself, keyed by id
        assert math.isclose(entry[str(token)]["logprob"], ref[p - 1, token].item(), abs_tol=1e-3)
        top = sorted(ref[p - 1].topk(3).indices.tolist())
        assert set(top) <= {int(k) for k in entry}
        assert len(entry) <= 4
        assert entry[str(token)]["decoded_token"] is not None
        ranks = {int(k): v["rank"] for k, v in entry.items()}
        assert ranks[token] == int((ref[p - 1] > ref[p - 1, token]).sum()) + 1


def test_echo_with_logprobs_lists_prompt_tokens_first(
    client: openai.OpenAI, hf: Any, prompt_ids: list[int]
) -> None:
    out = client.completions.create(
        model=MODEL, prompt=TEXT, max_tokens=3, temperature=0.0, echo=True, logprobs=2,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    choice = out.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(TEXT)
    assert len(lp.tokens) == len(prompt_ids) + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    ref = reference(hf, prompt_ids)
    for p in range(1, len(prompt_ids)):
        assert math.isclose(lp.token_logprobs[p], ref[p - 1, prompt_ids[p]].item(), abs_tol=1e-3)
        assert len(lp.top_logprobs[p]) <= 3
    assert lp.text_offset[0] == 0
    assert lp.text_offset == sorted(lp.text_offset)
    assert "".join(lp.tokens[: len(prompt_ids)]) == TEXT
    assert all(v is not None for v in lp.token_logprobs[len(prompt_ids) :])


def test_streamed_echo_with_logprobs_matches_the_plain_response(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL, "prompt": TEXT, "max_tokens": 4, "temperature": 0.0, "echo": True,
        "logprobs": 1, "extra_body": {"ignore_eos": True},
    }  # fmt: skip
    whole = client.completions.create(**kwargs).choices[0]
    tokens: list[str] = []
    values: list[float | None] = []
    text = ""
    for chunk in client.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            text += choice.text
            if choice.logprobs is not None:
                tokens += choice.logprobs.tokens
                values += choice.logprobs.token_logprobs
    assert text == whole.text
    assert tokens == whole.logprobs.tokens
    assert values == pytest.approx(whole.logprobs.token_logprobs)


def test_chat_prompt_logprobs_on_the_response(server: ServerProcess) -> None:
    body = {
        "messages": [{"role": "user", "content": TEXT}],
        "max_tokens": 2,
        "prompt_logprobs": 0,
    }
    r = post(server, "chat/completions", body)
    assert r.status_code == 200, r.text
    data = r.json()
    entries = data["prompt_logprobs"]
    assert entries[0] is None
    assert len(entries) == data["usage"]["prompt_tokens"]
    assert all(len(e) == 1 for e in entries[1:])  # prompt_logprobs=0: the prompt token only


def test_chat_prompt_logprobs_with_an_embeds_part(
    server: ServerProcess, embedder: Embedder
) -> None:
    """Where vLLM refuses, pe answers: null at the embedding rows, values elsewhere."""
    rows = embedder("soft prompt rows")
    content = [
        {"type": "text", "text": "Summarise:"},
        {"type": "prompt_embeds", "data": encode_prompt_embeds(rows, "safetensors")},
    ]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 2, "temperature": 0}
    r = post(server, "chat/completions", {**body, "prompt_logprobs": 1})
    assert r.status_code == 200, r.text
    entries = r.json()["prompt_logprobs"]
    assert len(entries) == r.json()["usage"]["prompt_tokens"]
    assert sum(e is None for e in entries) == len(rows) + 1  # the embeds and position 0
    plain = post(server, "chat/completions", body).json()
    assert plain["choices"][0]["message"] == r.json()["choices"][0]["message"]


def test_prompt_logprobs_refusals(server: ServerProcess) -> None:
    cases = [
        ("completions", {"prompt": TEXT, "prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
        ("completions", {"prompt": TEXT, "prompt_logprobs": -1}, "prompt_logprobs"),
        ("completions", {"prompt": TEXT, "prompt_logprobs": 99}, "prompt_logprobs"),
        (
            "chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "prompt_logprobs": 1, "stream": True},
            "prompt_logprobs",
        ),
        ("completions", {"prompt": TEXT, "n": 1, "best_of": 3, "stream": True}, "best_of"),
        ("completions", {"prompt": TEXT, "n": 3, "best_of": 2}, "best_of"),
    ]
    for route, body, param in cases:
        r = post(server, route, {"max_tokens": 2, **body})
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["param"] == param, (body, error)
        assert error["type"] == "invalid_request_error"


def test_best_of_returns_the_n_most_likely(client: openai.OpenAI) -> None:
    """best_of=4, n=2: two choices, indexed 0 and 1, ranked by cumulative logprob."""
    out = client.completions.create(
        model=MODEL, prompt=TEXT, max_tokens=5, temperature=1.0, seed=7, n=2, best_of=4,
        logprobs=0, extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert [c.index for c in out.choices] == [0, 1]
    totals = [sum(c.logprobs.token_logprobs) for c in out.choices]
    assert totals[0] >= totals[1]
    assert out.usage.completion_tokens == 5 * 2  # the returned choices' tokens, as vLLM counts
