"""The pe-client command line against the fake server; embeds files written without torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from client_fakes import FakeServer, Reply, chat_chunk, chat_json, completion_chunk, sse

from pe_client import RawTensor
from pe_client.cli import main
from pe_client.tensors import encode_embeds, load_embeds_file
from pe_common.codec import decode_prompt_embeds_numpy

X = np.arange(12, dtype=np.float32).reshape(3, 4) / 7


@pytest.fixture
def npy(tmp_path: Path) -> Path:
    path = tmp_path / "doc.npy"
    np.save(path, X)
    return path


@pytest.fixture
def bf16_safetensors(tmp_path: Path) -> Path:
    path = tmp_path / "doc.safetensors"
    blob = encode_embeds(RawTensor.bfloat16(X), "safetensors", binary=True)
    assert isinstance(blob, bytes)
    path.write_bytes(blob)
    return path


def sent(server: FakeServer, index: int = -1) -> dict[str, object]:
    return json.loads(server.requests[index].body)  # type: ignore[no-any-return]


def test_load_embeds_files(npy: Path, bf16_safetensors: Path, tmp_path: Path) -> None:
    np.testing.assert_array_equal(load_embeds_file(npy), X)
    raw = load_embeds_file(bf16_safetensors)
    assert isinstance(raw, RawTensor) and raw.shape == (3, 4) and raw.dtype == "bfloat16"
    f16 = tmp_path / "h.safetensors"
    f16.write_bytes(encode_embeds(X.astype(np.float16), binary=True))  # type: ignore[arg-type]
    loaded = load_embeds_file(f16)
    assert isinstance(loaded, np.ndarray) and loaded.dtype == np.float16
    with pytest.raises(ValueError, match=r"\.npy or \.safetensors"):
        load_embeds_file(tmp_path / "x.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00nope!")
    with pytest.raises(ValueError, match="not a safetensors"):
        load_embeds_file(tmp_path / "bad.safetensors")


def test_complete_streams_to_stdout(
    fake_server: FakeServer, npy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_server.script(Reply(sse=sse(completion_chunk("Hello"), completion_chunk(" world"))))
    argv = ["complete", "--base-url", fake_server.base_url, "--model", "m", "--embeds", str(npy)]
    assert main([*argv, "--prompt", "tail", "--max-tokens", "7"]) == 0
    assert capsys.readouterr().out == "Hello world\n"
    body = sent(fake_server)
    assert body["stream"] is True and body["max_tokens"] == 7 and body["temperature"] == 0.0
    assert body["prompt"] == "tail"
    (payload,) = body["prompt_embeds"]  # type: ignore[misc]
    np.testing.assert_array_equal(decode_prompt_embeds_numpy(payload, hidden_size=4), X)


def test_chat_places_embeds_after_the_first_text(
    fake_server: FakeServer, bf16_safetensors: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_server.script(
        Reply(body={"object": "list", "data": [{"id": "served", "object": "model"}]}),
        Reply(sse=sse(chat_chunk("Short."), chat_chunk("", "stop"))),
    )
    argv = ["chat", "--base-url", fake_server.base_url, "--system", "Be brief."]
    argv += ["--embeds", str(bf16_safetensors), "--embeds-format", "raw"]
    assert main([*argv, "Summarise:", "in one line"]) == 0
    assert capsys.readouterr().out == "Short.\n"
    assert fake_server.requests[0].path == "/v1/models"
    body = sent(fake_server)
    assert body["model"] == "served"
    system, user = body["messages"]  # type: ignore[misc]
    assert system == {"role": "system", "content": "Be brief."}
    assert [p["type"] for p in user["content"]] == ["text", "prompt_embeds", "text"]
    assert user["content"][1]["dtype"] == "bfloat16"


def test_no_stream_and_errors(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PE_BASE_URL", fake_server.base_url)
    fake_server.script(Reply(body=chat_json("whole")))
    assert main(["chat", "--model", "m", "--no-stream", "hi"]) == 0
    assert capsys.readouterr().out == "whole\n"
    error = {"error": {"message": "bad embeds", "param": "prompt_embeds", "code": "x"}}
    fake_server.script(Reply(status=400, body=error))
    assert main(["chat", "--model", "m", "hi"]) == 1
    assert "BadRequestError" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["complete", "--model", "m"])
