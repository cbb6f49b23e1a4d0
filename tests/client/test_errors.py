"""Error responses become typed exceptions carrying status, code, param, message, request id."""

from __future__ import annotations

import msgspec
import pytest
from client_fakes import FakeServer, Reply

import pe_client
from pe_client import PEClient

STATUS_CLASSES = [
    (400, pe_client.BadRequestError),
    (401, pe_client.AuthenticationError),
    (403, pe_client.PermissionDeniedError),
    (404, pe_client.NotFoundError),
    (409, pe_client.ConflictError),
    (413, pe_client.RequestTooLargeError),
    (422, pe_client.UnprocessableEntityError),
    (429, pe_client.RateLimitError),
    (500, pe_client.InternalServerError),
    (502, pe_client.InternalServerError),
    (503, pe_client.ServiceUnavailableError),
    (418, pe_client.APIStatusError),
]


def envelope(status: int) -> dict[str, object]:
    return {
        "error": {
            "message": f"failure {status}",
            "type": "invalid_request_error",
            "param": "prompt_embeds",
            "code": "hidden_size_mismatch",
        }
    }


@pytest.mark.parametrize(("status", "cls"), STATUS_CLASSES)
def test_every_status_maps_to_its_class(
    fake_server: FakeServer, status: int, cls: type[pe_client.APIStatusError]
) -> None:
    fake_server.script(
        Reply(status=status, body=envelope(status), headers={"x-request-id": "req-42"})
    )
    with (
        PEClient(base_url=fake_server.base_url, max_retries=0) as client,
        pytest.raises(cls) as info,
    ):
        client.completions.create(model="m", prompt="x")
    err = info.value
    assert type(err) is cls
    assert isinstance(err, pe_client.APIError) and isinstance(err, pe_client.PEClientError)
    assert err.status_code == status
    assert err.message == f"failure {status}"
    assert err.code == "hidden_size_mismatch"
    assert err.param == "prompt_embeds"
    assert err.type == "invalid_request_error"
    assert err.request_id == "req-42"
    assert err.body == envelope(status)["error"]
    assert err.response.status_code == status
    assert str(err) == f"Error code: {status} - failure {status}"


def test_service_unavailable_is_an_internal_server_error() -> None:
    assert issubclass(pe_client.ServiceUnavailableError, pe_client.InternalServerError)
    assert issubclass(pe_client.APITimeoutError, pe_client.APIConnectionError)
    assert issubclass(pe_client.MissingDependencyError, ImportError)


def test_non_json_error_body(fake_server: FakeServer) -> None:
    fake_server.script(Reply(status=404, body=b"no such route", content_type="text/plain"))
    with (
        PEClient(base_url=fake_server.base_url) as client,
        pytest.raises(pe_client.NotFoundError) as info,
    ):
        client.models.list()
    assert info.value.message == "no such route"
    assert info.value.code is None and info.value.param is None and info.value.body is None


def test_vllm_style_integer_code(fake_server: FakeServer) -> None:
    body = {"error": {"message": "bad", "type": "BadRequestError", "param": None, "code": 400}}
    fake_server.script(Reply(status=400, body=body))
    with (
        PEClient(base_url=fake_server.base_url) as client,
        pytest.raises(pe_client.BadRequestError) as info,
    ):
        client.completions.create(model="m", prompt="x")
    assert info.value.code == 400 and info.value.param is None


def test_msgpack_error_body(fake_server: FakeServer) -> None:
    payload = msgspec.msgpack.encode(envelope(413))
    fake_server.script(Reply(status=413, body=payload, content_type="application/msgpack"))
    with (
        PEClient(base_url=fake_server.base_url, transport="msgpack") as client,
        pytest.raises(pe_client.RequestTooLargeError) as info,
    ):
        client.completions.create(model="m", prompt="x")
    assert info.value.code == "hidden_size_mismatch"


def test_malformed_success_body_is_a_validation_error(fake_server: FakeServer) -> None:
    fake_server.script(Reply(body={"unexpected": True}))
    with (
        PEClient(base_url=fake_server.base_url) as client,
        pytest.raises(pe_client.APIResponseValidationError, match="CompletionResponse"),
    ):
        client.completions.create(model="m", prompt="x")


async def test_async_error_mapping(fake_server: FakeServer) -> None:
    fake_server.script(Reply(status=401, body=envelope(401)))
    async with pe_client.AsyncPEClient(base_url=fake_server.base_url) as client:
        with pytest.raises(pe_client.AuthenticationError) as info:
            await client.chat.completions.create(model="m", messages=[])
    assert info.value.status_code == 401 and len(fake_server.requests) == 1
