"""Streams over HTTP: typed chunks, [DONE], error events, and closing early."""

from __future__ import annotations

import gc
import json

import pytest
from client_fakes import FakeServer, Reply, chat_chunk, completion_chunk, sse

import pe_client
from pe_client import AsyncPEClient, AsyncStream, PEClient, Stream
from pe_common.protocol import ChatCompletionStreamResponse, CompletionStreamResponse

ERROR_EVENT = {
    "error": {
        "message": "engine failed",
        "type": "internal_server_error",
        "param": None,
        "code": "engine_error",
    }
}


def test_completion_stream_stops_at_done(fake_server: FakeServer) -> None:
    chunks = sse(completion_chunk("Hel"), completion_chunk("lo", "length"))
    chunks.append(b"data: " + json.dumps(completion_chunk("after done")).encode() + b"\n\n")
    fake_server.script(Reply(sse=chunks))
    with PEClient(base_url=fake_server.base_url) as client:
        stream = client.completions.create(model="m", prompt="x", stream=True)
        assert isinstance(stream, Stream)
        with stream:
            received = list(stream)
    assert all(isinstance(c, CompletionStreamResponse) for c in received)
    assert [c.choices[0].text for c in received] == ["Hel", "lo"]
    assert received[-1].choices[0].finish_reason == "length"
    seen = fake_server.requests[0]
    assert seen.headers["Accept"] == "text/event-stream"
    assert json.loads(seen.body)["stream"] is True
    assert stream.response.is_closed


def test_msgpack_transport_streams_sse(fake_server: FakeServer) -> None:
    fake_server.script(Reply(sse=sse(chat_chunk("a"), chat_chunk("b", "stop"))))
    with (
        PEClient(base_url=fake_server.base_url, transport="msgpack") as client,
        client.chat.completions.create(model="m", messages=[], stream=True) as stream,
    ):
        text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == "ab"
    seen = fake_server.requests[0]
    assert seen.headers["Content-Type"] == "application/msgpack"
    assert seen.headers["Accept"] == "text/event-stream"


def test_error_event_raises_api_error(fake_server: FakeServer) -> None:
    fake_server.script(Reply(sse=sse(completion_chunk("partial"), ERROR_EVENT, done=False)))
    with PEClient(base_url=fake_server.base_url) as client:
        stream = client.completions.create(model="m", prompt="x", stream=True)
        received = []
        with pytest.raises(pe_client.APIError) as info:
            for chunk in stream:
                received.append(chunk.choices[0].text)
    assert received == ["partial"]
    err = info.value
    assert type(err) is pe_client.APIError
    assert err.message == "engine failed" and err.code == "engine_error"
    assert err.status_code is None
    assert stream.response.is_closed


def test_chunk_whose_text_says_error_is_not_an_error(fake_server: FakeServer) -> None:
    fake_server.script(Reply(sse=sse(completion_chunk('"error"'), completion_chunk("error"))))
    with PEClient(base_url=fake_server.base_url) as client:
        texts = [c.choices[0].text for c in client.completions.create(model="m", stream=True)]
    assert texts == ['"error"', "error"]


def test_malformed_chunk_is_a_validation_error(fake_server: FakeServer) -> None:
    fake_server.script(Reply(sse=[b"data: {not json}\n\n"]))
    with (
        PEClient(base_url=fake_server.base_url) as client,
        pytest.raises(pe_client.APIResponseValidationError),
    ):
        list(client.completions.create(model="m", prompt="x", stream=True))


def test_error_status_before_the_stream_raises_and_retries(
    fake_server: FakeServer, no_sleep: list[float]
) -> None:
    fake_server.script(
        Reply(status=503, body={"error": {"message": "starting"}}),
        Reply(sse=sse(completion_chunk("ok"))),
    )
    with PEClient(base_url=fake_server.base_url) as client:
        texts = [c.choices[0].text for c in client.completions.create(model="m", stream=True)]
    assert texts == ["ok"] and len(no_sleep) == 1
    fake_server.script(Reply(status=400, body={"error": {"message": "bad", "param": "n"}}))
    with (
        PEClient(base_url=fake_server.base_url) as client,
        pytest.raises(pe_client.BadRequestError) as info,
    ):
        client.completions.create(model="m", prompt="x", stream=True)
    assert info.value.param == "n"


def endless(text: str = "tok") -> Reply:
    return Reply(sse=sse(completion_chunk(text), done=False), hold_open=True)


def test_leaving_a_with_block_early_disconnects(fake_server: FakeServer) -> None:
    fake_server.script(endless())
    with PEClient(base_url=fake_server.base_url) as client:
        with client.completions.create(model="m", prompt="x", stream=True) as stream:
            first = next(iter(stream))
        assert first.choices[0].text == "tok"
        assert stream.response.is_closed
        assert fake_server.disconnected.wait(5)
    assert not fake_server.stream_finished.is_set()


def test_breaking_out_of_a_loop_keeps_the_stream_until_it_is_dropped(
    fake_server: FakeServer,
) -> None:
    # As in the OpenAI SDK, a stream has one iterator: leaving a loop does not close it, and
    # the next loop carries on where the last one stopped. Dropping the stream disconnects.
    fake_server.script(Reply(sse=sse(completion_chunk("a"), completion_chunk("b"), done=False),
                             hold_open=True))  # fmt: skip
    with PEClient(base_url=fake_server.base_url) as client:
        stream = client.completions.create(model="m", prompt="x", stream=True)
        for chunk in stream:
            assert chunk.choices[0].text == "a"
            break
        assert next(iter(stream)).choices[0].text == "b"
        response = stream.response
        assert not response.is_closed
        del stream, chunk
        gc.collect()
        assert response.is_closed
        assert fake_server.disconnected.wait(5)


def test_close_before_reading_disconnects(fake_server: FakeServer) -> None:
    fake_server.script(endless())
    with PEClient(base_url=fake_server.base_url) as client:
        stream = client.completions.create(model="m", prompt="x", stream=True)
        stream.close()
        assert fake_server.disconnected.wait(5)
        with pytest.raises(StopIteration):
            next(stream)


async def test_async_stream_and_chat_chunks(fake_server: FakeServer) -> None:
    fake_server.script(Reply(sse=sse(chat_chunk("x"), chat_chunk("y", "stop"))))
    async with AsyncPEClient(base_url=fake_server.base_url) as client:
        stream = await client.chat.completions.create(model="m", messages=[], stream=True)
        assert isinstance(stream, AsyncStream)
        async with stream:
            received = [c async for c in stream]
    assert all(isinstance(c, ChatCompletionStreamResponse) for c in received)
    assert [c.choices[0].delta.content for c in received] == ["x", "y"]


async def test_async_early_exit_disconnects(fake_server: FakeServer) -> None:
    fake_server.script(endless())
    async with AsyncPEClient(base_url=fake_server.base_url) as client:
        stream = await client.completions.create(model="m", prompt="x", stream=True)
        async with stream:
            async for chunk in stream:
                assert chunk.choices[0].text == "tok"
                break
        assert stream.response.is_closed
        assert fake_server.disconnected.wait(5)


async def test_async_error_event(fake_server: FakeServer) -> None:
    fake_server.script(Reply(sse=sse(ERROR_EVENT, done=False)))
    async with AsyncPEClient(base_url=fake_server.base_url) as client:
        stream = await client.completions.create(model="m", prompt="x", stream=True)
        with pytest.raises(pe_client.APIError, match="engine failed"):
            async for _ in stream:
                pass
        assert stream.response.is_closed
