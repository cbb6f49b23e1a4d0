"""The SSE parser on recorded bytes: line endings, split chunks, comments, multi-line data."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pe_client.streaming import ServerSentEvent, SSEDecoder

RECORDED = (
    b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m",'
    b'"choices":[{"index":0,"text":"Hel","finish_reason":null}]}\n\n'
    b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m",'
    b'"choices":[{"index":0,"text":"lo","finish_reason":"length"}]}\n\n'
    b"data: [DONE]\n\n"
)


def decode_all(chunks: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events


def test_recorded_stream_gives_three_events() -> None:
    events = decode_all([RECORDED])
    assert [e.data[:8] for e in events] == ['{"id":"c', '{"id":"c', "[DONE]"]
    assert all(e.event is None for e in events)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_any_chunking_gives_the_same_events(size: int) -> None:
    chunks = [RECORDED[i : i + size] for i in range(0, len(RECORDED), size)]
    assert decode_all(chunks) == decode_all([RECORDED])


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(newline: bytes) -> None:
    raw = RECORDED.replace(b"\n", newline)
    for size in (1, 5, len(raw)):
        chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
        assert decode_all(chunks) == decode_all([RECORDED])


def test_comments_fields_and_multiline_data() -> None:
    raw = (
        b": keep-alive\n\n"
        b"event: error\nid: 7\nretry: 1500\ndata: line one\ndata:line two\n\n"
        b"data\n\n"
        b"unknown: ignored\ndata: x\n\n"
    )
    events = decode_all([raw])
    assert events == [
        ServerSentEvent(data="line one\nline two", event="error", id="7", retry=1500),
        ServerSentEvent(data="", id="7"),
        ServerSentEvent(data="x", id="7"),
    ]


def test_unterminated_last_event_is_flushed() -> None:
    assert decode_all([b"data: tail"]) == [ServerSentEvent(data="tail")]


def test_multibyte_utf8_split_across_chunks() -> None:
    raw = 'data: {"text":"héllo ✓"}\n\n'.encode()
    chunks = [raw[i : i + 1] for i in range(len(raw))]
    assert decode_all(chunks)[0].data == '{"text":"héllo ✓"}'


event_data = st.lists(
    st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",))),
    min_size=1,
    max_size=3,
)


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(event_data, min_size=1, max_size=5),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_property_any_events_any_split(
    events: list[list[str]], newline: str, cuts: list[int]
) -> None:
    text = "".join(
        "".join(f"data: {line}{newline}" for line in lines) + newline for lines in events
    )
    raw = text.encode()
    points = sorted({c % (len(raw) + 1) for c in cuts})
    chunks = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    expected = [ServerSentEvent(data="\n".join(lines)) for lines in events]
    assert decode_all(chunks) == expected
