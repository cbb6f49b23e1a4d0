"""The app factory in process (a stub backend, no model): every route is either protected by
the API key or on the explicit public allowlist, and the middlewares answer before the body.
The last test checks the same route tables on the real server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from server_harness import MODEL, ServerProcess

from pe_server.app import create_app
from pe_server.backends.base import BackendStats, ModelInfo
from pe_server.config import ServerConfig

KEY = "route-test-key"
# The only routes reachable without a key. Adding a route forces a decision here.
PUBLIC_ROUTES = {("GET", "/health"), ("HEAD", "/health"), ("GET", "/version"), ("HEAD", "/version")}


class StubBackend:
    """Just enough backend for the app to start; generation is never reached in these tests."""

    name = "stub"
    supports_prompt_logprobs = False
    supports_best_of = False
    tokenizer: Any = None
    chat_builder: Any = None

    def __init__(self) -> None:
        import torch

        self.info = ModelInfo(hidden_size=8, max_model_len=64, dtype=torch.float32, vocab_size=16)
        self.started = False

    @property
    def is_healthy(self) -> bool:
        return self.started

    async def start(self) -> None:
        self.started = True

    async def shutdown(self) -> None:
        self.started = False

    async def generate(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[Any]:
        raise AssertionError("generation must not be reached")
        yield  # pragma: no cover

    async def abort(self, request_id: str) -> None:
        return None

    def stats(self) -> BackendStats:
        return BackendStats(num_total_blocks=4, num_free_blocks=4)


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    config = ServerConfig(
        model="stub-model",
        api_key=[KEY],
        max_embeds_bytes=1024,
        max_concurrent_requests=1,
    )
    app = create_app(config, backend=StubBackend())
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def concrete_path(route: web.AbstractRoute) -> str:
    info = route.resource.get_info() if route.resource else {}
    if "path" in info:
        return str(info["path"])
    return str(info["formatter"]).replace("{model}", "stub-model")


def registered_routes(app: web.Application) -> list[web.AbstractRoute]:
    return [r for r in app.router.routes() if r.resource is not None]


async def test_every_route_is_protected_or_public(client: TestClient) -> None:
    routes = registered_routes(client.app)
    assert len(routes) >= 12
    seen_public = set()
    for route in routes:
        method, path = route.method, concrete_path(route)
        response = await client.request(method, path)
        key = (method, path)
        if key in PUBLIC_ROUTES:
            seen_public.add(key)
            assert response.status == 200, key
            assert policy_of_route(route).is_public
        else:
            assert response.status == 401, key
            if method != "HEAD":
                body = await response.json()
                assert body["error"]["type"] == "authentication_error"
                assert body["error"]["code"] == "invalid_api_key"
            assert response.headers["WWW-Authenticate"] == "Bearer"
    assert seen_public == PUBLIC_ROUTES


def policy_of_route(route: web.AbstractRoute) -> Any:
    return getattr(route.handler, "pe_policy", None)


async def test_missing_wrong_and_malformed_keys_get_the_same_401(client: TestClient) -> None:
    bodies = set()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"},
                    {"Authorization": KEY}, {"Authorization": f"Bearer {KEY}x"}):  # fmt: skip
        response = await client.post("/v1/completions", headers=headers, data=b"{}")
        assert response.status == 401
        bodies.add(await response.read())
    assert len(bodies) == 1


async def test_unknown_routes_and_methods_use_the_envelope(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    for path in (
        "/nope",
        "/v1//completions",
        "/V1/completions",
        "/v1/completions/",
        "/v1%2Fmodels",
    ):
        response = await client.get(path, headers=auth)
        assert response.status in (404, 405), path
        body = await response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
    response = await client.delete("/v1/completions", headers=auth)
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"
    # Without a key, an unknown path is 401 as well: nothing is learned without the key.
    assert (await client.get("/nope")).status == 401


async def test_body_checks_happen_before_reading(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    gz = await client.post(
        "/v1/completions", headers={**auth, "Content-Encoding": "gzip"}, data=b"x"
    )
    assert gz.status == 415
    assert (await gz.json())["error"]["code"] == "unsupported_content_encoding"
    plain = await client.post(
        "/v1/completions", headers={**auth, "Content-Type": "text/plain"}, data=b"x"
    )
    assert plain.status == 415
    assert (await plain.json())["error"]["code"] == "unsupported_media_type"
    big = await client.post("/tokenize", headers=auth, data=b"x" * (2 * 2**20))
    assert big.status == 413
    body = await big.json()
    assert body["error"]["code"] == "request_too_large"
    assert body["error"]["type"] == "invalid_request_error"


async def test_policies_are_explicit(client: TestClient) -> None:
    for route in registered_routes(client.app):
        policy = policy_of_route(route)
        path = concrete_path(route)
        if route.method == "POST":
            assert policy is not None and policy.has_body and policy.is_admitted, path
        if path.startswith("/v1/") and route.method == "POST":
            assert policy.is_generation, path


async def test_errors_are_json_envelopes_without_internals(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = await client.post("/v1/completions", headers=auth, data=b"{not json")
    assert response.status == 400
    text = await response.text()
    error = json.loads(text)["error"]
    assert error["type"] == "invalid_request_error"
    assert "Traceback" not in text and "0x" not in text and "/work" not in text


async def test_health_and_version_are_public(client: TestClient) -> None:
    assert (await client.get("/health")).status == 200
    version = await (await client.get("/version")).json()
    assert isinstance(version["version"], str)


def test_live_server_routes_are_protected_or_public(server: ServerProcess) -> None:
    """The same route tables on the real server (native backend, real model): every registered
    route answers 401 without a key unless it is on the public allowlist, and every path the
    published OpenAPI document names is a registered route."""
    app = create_app(ServerConfig(model="stub-model", api_key=[KEY]), backend=StubBackend())
    routes = registered_routes(app)
    templates = {str(r.resource.canonical) for r in routes if r.resource is not None}
    assert set(server.get("/openapi.json").json()["paths"]) <= templates
    for route in routes:
        path = concrete_path(route).replace("stub-model", MODEL)
        response = httpx.request(route.method, f"{server.root}{path}", timeout=30)
        if (route.method, path) in PUBLIC_ROUTES:
            assert response.status_code == 200, (route.method, path)
        else:
            assert response.status_code == 401, (route.method, path)
            assert response.headers["WWW-Authenticate"] == "Bearer"
        authorized = httpx.request(
            route.method, f"{server.root}{path}", headers=server.headers, timeout=30
        )
        assert authorized.status_code != 401, (route.method, path)
