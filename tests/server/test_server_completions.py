"""/v1/completions on the real server with the official openai client and raw HTTP."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
from server_harness import ServerProcess

from conftest import MODEL, Embedder
from pe_common.codec import encode_prompt_embeds

TEXT = "The quick brown fox jumps over the lazy dog"
OTHER = "Paris is the capital of France"
GREEDY: dict[str, Any] = {"max_tokens": 8, "temperature": 0.0}
IGNORE_EOS = {"ignore_eos": True}


def b64(x: Any) -> str:
    return str(encode_prompt_embeds(x, "safetensors"))


def tensor2base64(x: Any) -> str:
    """Exactly what vLLM's ``tensor2base64`` sends: base64 of ``torch.save(tensor)``."""
    import torch

    buffer = io.BytesIO()
    torch.save(torch.from_numpy(x), buffer)
    buffer.seek(0)
    return base64.b64encode(buffer.read()).decode("utf-8")


def complete(client: openai.OpenAI, **kwargs: Any) -> Any:
    extra = {**IGNORE_EOS, **kwargs.pop("extra_body", {})}
    return client.completions.create(model=MODEL, extra_body=extra, **{**GREEDY, **kwargs})


def test_one_embed_equals_its_token_ids(client: openai.OpenAI, embedder: Embedder) -> None:
    ids = embedder.ids(TEXT)
    by_ids = complete(client, prompt=ids)
    by_embeds = complete(client, prompt=None, extra_body={"prompt_embeds": b64(embedder(TEXT))})
    assert by_embeds.choices[0].text == by_ids.choices[0].text
    assert by_embeds.usage.prompt_tokens == len(ids) == by_ids.usage.prompt_tokens
    assert by_embeds.usage.completion_tokens == 8
    assert by_embeds.choices[0].finish_reason == "length"
    assert by_embeds.object == "text_completion" and by_embeds.id.startswith("cmpl-")


def test_vllm_tensor2base64_payload_is_accepted(client: openai.OpenAI, embedder: Embedder) -> None:
    rows = embedder(TEXT)
    ours = complete(client, extra_body={"prompt_embeds": b64(rows)}, prompt=None)
    vllms = complete(client, extra_body={"prompt_embeds": tensor2base64(rows)}, prompt=None)
    assert vllms.choices[0].text == ours.choices[0].text


def test_vllm_docs_example_with_empty_prompt(
    client: openai.OpenAI, tiny_llama_dir: Path, embedder: Embedder
) -> None:
    """vLLM's prompt_embed_inference_with_openai_client.py, step by step: `prompt=""`
    ("Required but empty") with the embeds gets one choice, the embeds' own."""
    import torch
    import transformers

    transformers_model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    chat = [{"role": "user", "content": "Please tell me about the capital of France."}]
    token_ids = embedder.tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=False
    )
    embedding_layer = transformers_model.get_input_embeddings()
    prompt_embeds = embedding_layer(token_ids).squeeze(0)
    assert prompt_embeds.requires_grad
    buffer = io.BytesIO()
    torch.save(prompt_embeds, buffer)
    buffer.seek(0)
    binary_data = buffer.read()
    encoded_embeds = base64.b64encode(binary_data).decode("utf-8")

    completion = client.completions.create(
        model=MODEL,
        # NOTE: The OpenAI client does not allow `None` as an input to
        # `prompt`. Use an empty string if you have no text prompts.
        prompt="",
        max_tokens=5,
        temperature=0.0,
        # NOTE: The OpenAI client allows passing in extra JSON body via the
        # `extra_body` argument.
        extra_body={"prompt_embeds": encoded_embeds},
    )
    reference = client.completions.create(
        model=MODEL,
        prompt=None,  # type: ignore[arg-type]
        max_tokens=5,
        temperature=0.0,
        extra_body={"prompt_embeds": encoded_embeds},
    )
    assert len(completion.choices) == 1
    assert completion.choices[0].text == reference.choices[0].text
    assert completion.usage.prompt_tokens == token_ids.shape[-1]


def test_empty_prompt_list_with_embeds_is_no_text_prompt(
    client: openai.OpenAI, embedder: Embedder
) -> None:
    embeds = {"prompt_embeds": [b64(embedder(TEXT)), b64(embedder(OTHER))]}
    by_none = complete(client, prompt=None, extra_body=embeds)
    by_empty = complete(client, prompt=["", ""], extra_body=embeds)
    assert [c.text for c in by_empty.choices] == [c.text for c in by_none.choices]
    assert len(by_empty.choices) == 2


def test_raw_embeds_object(client: openai.OpenAI, embedder: Embedder) -> None:
    rows = embedder(TEXT)
    raw = encode_prompt_embeds(rows, "raw")
    by_raw = complete(client, prompt=None, extra_body={"prompt_embeds": raw})
    by_b64 = complete(client, prompt=None, extra_body={"prompt_embeds": b64(rows)})
    assert by_raw.choices[0].text == by_b64.choices[0].text


def test_list_of_embeds_and_text_embeds_come_first(
    client: openai.OpenAI, embedder: Embedder
) -> None:
    singles = [
        complete(client, prompt=None, extra_body={"prompt_embeds": b64(embedder(t))})
        for t in (TEXT, OTHER)
    ]
    text_only = complete(client, prompt="Hello there")
    mixed = complete(
        client,
        prompt="Hello there",
        extra_body={"prompt_embeds": [b64(embedder(TEXT)), b64(embedder(OTHER))]},
    )
    assert [c.index for c in mixed.choices] == [0, 1, 2]
    assert [c.text for c in mixed.choices] == [
        singles[0].choices[0].text,
        singles[1].choices[0].text,
        text_only.choices[0].text,
    ]
    expected = sum(s.usage.prompt_tokens for s in singles) + text_only.usage.prompt_tokens
    assert mixed.usage.prompt_tokens == expected
    assert mixed.usage.completion_tokens == 3 * 8


def test_n_choices_are_indexed_per_prompt(client: openai.OpenAI, embedder: Embedder) -> None:
    res = complete(
        client,
        prompt=["a b c", "d e f"],
        n=2,
        temperature=1.0,
        seed=7,
        extra_body={"prompt_embeds": b64(embedder(TEXT))},
    )
    assert [c.index for c in res.choices] == list(range(6))
    assert res.usage.completion_tokens == 6 * 8


def test_streaming_joins_to_the_non_streamed_text(
    client: openai.OpenAI, embedder: Embedder
) -> None:
    body = {"prompt_embeds": [b64(embedder(TEXT)), b64(embedder(OTHER))]}
    done = complete(client, prompt=None, extra_body=body)
    stream = complete(
        client, prompt=None, extra_body=body, stream=True, stream_options={"include_usage": True}
    )
    pieces: dict[int, str] = {0: "", 1: ""}
    finish: dict[int, str | None] = {}
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            pieces[choice.index] += choice.text
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
        if chunk.usage:
            usage = chunk.usage
    assert pieces == {c.index: c.text for c in done.choices}
    assert finish == {0: "length", 1: "length"}
    assert usage is not None and usage.prompt_tokens == done.usage.prompt_tokens
    assert usage.completion_tokens == 16


def test_logprobs_shapes(client: openai.OpenAI, embedder: Embedder) -> None:
    res = complete(
        client, prompt=None, logprobs=3, extra_body={"prompt_embeds": b64(embedder(TEXT))}
    )
    lp = res.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    assert len(lp.text_offset) == 8 and lp.text_offset[0] == 0
    assert all(1 <= len(top) <= 4 for top in lp.top_logprobs)
    assert all(v <= 0.0 for v in lp.token_logprobs)
    # Greedy: the sampled token is the most likely one.
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert top[token] == pytest.approx(value)
        assert value == pytest.approx(max(top.values()))
    assert "".join(lp.tokens) == res.choices[0].text
    zero = complete(client, prompt=TEXT, logprobs=0)
    assert all(len(top) == 1 for top in zero.choices[0].logprobs.top_logprobs)


def test_return_token_ids(client: openai.OpenAI, embedder: Embedder) -> None:
    ids = embedder.ids(TEXT)
    res = complete(
        client,
        prompt=ids,
        extra_body={"prompt_embeds": b64(embedder(TEXT)), "return_token_ids": True},
    )
    embeds_choice, ids_choice = (c.model_dump() for c in res.choices)
    assert embeds_choice["prompt_token_ids"] is None
    assert ids_choice["prompt_token_ids"] == ids
    assert embeds_choice["token_ids"] == ids_choice["token_ids"]
    assert len(embeds_choice["token_ids"]) == 8


def test_stop_seed_and_penalties(client: openai.OpenAI) -> None:
    base = complete(client, prompt=TEXT, max_tokens=12)
    text = base.choices[0].text
    if len(text.strip()) > 2:
        stop = text.strip()[1:3]
        cut = complete(client, prompt=TEXT, max_tokens=12, stop=[stop])
        assert cut.choices[0].finish_reason == "stop"
        assert stop not in cut.choices[0].text
        assert text.startswith(cut.choices[0].text)
    a = complete(client, prompt=TEXT, temperature=1.0, seed=123)
    b = complete(client, prompt=TEXT, temperature=1.0, seed=123)
    assert a.choices[0].text == b.choices[0].text
    penalised = complete(
        client, prompt=TEXT, presence_penalty=1.5, frequency_penalty=1.0,
        extra_body={"repetition_penalty": 1.3, "top_k": 5, "min_p": 0.01},
    )  # fmt: skip
    assert penalised.usage.completion_tokens == 8


def test_default_max_tokens_is_16(client: openai.OpenAI) -> None:
    res = client.completions.create(model=MODEL, prompt=TEXT, extra_body=IGNORE_EOS)
    assert res.usage.completion_tokens == 16


@pytest.mark.parametrize(
    ("extra", "message", "param"),
    [
        ({"echo": True}, "Echo is unsupported with prompt embeds.", None),
        ({"suffix": "x"}, "suffix is not supported with prompt_embeds", "suffix"),
        ({"prompt_logprobs": 1}, "prompt_logprobs is not compatible with prompt embeds.", None),
    ],
)
def test_vllm_refusals_with_embeds(
    client: openai.OpenAI, embedder: Embedder, extra: dict[str, Any], message: str, param: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        complete(client, prompt=None, extra_body={"prompt_embeds": b64(embedder(TEXT)), **extra})
    error = info.value.body
    assert error["message"] == message
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_missing_prompt(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        complete(client, prompt=None, extra_body={"prompt_embeds": []})
    assert info.value.body["message"] == (
        "Either prompt or prompt_embeds must be provided and non-empty."
    )
    assert info.value.body["param"] == "prompt"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    assert info.value.body["code"] == "model_not_found"


def test_msgpack_body_and_response(server: ServerProcess, embedder: Embedder) -> None:
    rows = embedder(TEXT)
    body = {
        "model": MODEL,
        "prompt_embeds": encode_prompt_embeds(rows, "safetensors", binary=True),
        "max_tokens": 8,
        "temperature": 0.0,
        "ignore_eos": True,
    }
    packed = msgspec.msgpack.encode(body)
    as_msgpack = server.post(
        "/v1/completions", content=packed, headers={"Content-Type": "application/msgpack"}
    )
    assert as_msgpack.status_code == 200
    assert as_msgpack.headers["content-type"].startswith("application/msgpack")
    decoded = msgspec.msgpack.decode(as_msgpack.content)
    as_json = server.post(
        "/v1/completions",
        content=packed,
        headers={"Content-Type": "application/msgpack", "Accept": "application/json"},
    )
    assert as_json.headers["content-type"].startswith("application/json")
    assert as_json.json()["choices"][0]["text"] == decoded["choices"][0]["text"]
    json_body = {**body, "prompt_embeds": b64(rows)}
    by_json = server.post("/v1/completions", json=json_body)
    assert by_json.json()["choices"][0]["text"] == decoded["choices"][0]["text"]
    raw = {**body, "prompt_embeds": encode_prompt_embeds(rows, "raw", binary=True)}
    by_raw = server.post(
        "/v1/completions",
        content=msgspec.msgpack.encode(raw),
        headers={"Content-Type": "application/msgpack", "Accept": "application/json"},
    )
    assert by_raw.json()["choices"][0]["text"] == decoded["choices"][0]["text"]


def test_raw_stream_format(server: ServerProcess) -> None:
    body = {"model": MODEL, "prompt": TEXT, "max_tokens": 3, "stream": True, "ignore_eos": True}
    with httpx.stream(
        "POST", f"{server.root}/v1/completions", json=body, headers=server.headers, timeout=30
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(response.iter_bytes())
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    assert all(e.startswith(b"data: {") for e in events[:-2])
