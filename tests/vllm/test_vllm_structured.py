"""Constraints on the vLLM backends (issue 20): pe builds one ``StructuredOutputsParams`` per
request and vLLM compiles and applies it.

``--backend vllm-remote`` against the fake upstream (default tox run, no vLLM needed): the
upstream body carries vLLM's ``structured_outputs`` object for ``response_format``,
``structured_outputs``, ``guided_*`` and a named tool. ``--backend vllm`` in process (tox -e vllm):
the field names pe passes are vLLM's, and vLLM's output obeys a choice and a regex.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from fake_upstream import FakeUpstream
from server_harness import MODEL, ServerProcess

from pe_engine.sampling_params import SamplingParams, StructuredOutputsParams
from pe_server.backends import is_vllm_installed
from pe_server.backends.vllm_backend import engine_argv
from pe_server.backends.vllm_mapping import structured_fields
from pe_server.config import ServerConfig

requires_vllm = pytest.mark.skipif(
    not is_vllm_installed(), reason="vLLM is not installed (tox -e vllm)"
)
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather in a city", "parameters": SCHEMA},
}
PLATE = r"[0-9]{3}-[a-z]{2}"
YES_NO = ["yes", "no"]


def sent_constraint(upstream: FakeUpstream, response: httpx.Response) -> dict[str, Any]:
    """The ``structured_outputs`` object of the body the upstream got for ``response``."""
    assert response.status_code == 200, response.text
    return upstream.bodies[-1]["structured_outputs"]


# --- structured_fields: pe's params in vLLM's names -------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (StructuredOutputsParams(json=SCHEMA), {"json": SCHEMA}),
        (StructuredOutputsParams(json='{"type": "object"}'), {"json": '{"type": "object"}'}),
        (StructuredOutputsParams(regex=PLATE), {"regex": PLATE}),
        (StructuredOutputsParams(choice=YES_NO), {"choice": YES_NO}),
        (StructuredOutputsParams(grammar='start: "a"'), {"grammar": 'start: "a"'}),
        (StructuredOutputsParams(json_object=True), {"json_object": True}),
        (
            StructuredOutputsParams(
                json=SCHEMA,
                disable_any_whitespace=True,
                disable_additional_properties=True,
                whitespace_pattern=r"[ ]?",
            ),
            {
                "json": SCHEMA,
                "disable_any_whitespace": True,
                "disable_additional_properties": True,
                "whitespace_pattern": r"[ ]?",
            },
        ),
    ],
)
def test_structured_fields_name_one_kind_and_the_options_set(
    spec: StructuredOutputsParams, expected: dict[str, Any]
) -> None:
    assert structured_fields(SamplingParams(structured_outputs=spec)) == expected


def test_no_constraint_has_no_structured_fields() -> None:
    assert structured_fields(SamplingParams()) is None


# --- vllm-remote: what the upstream receives --------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    tiny_llama_dir: Path, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("gateway") / "server.log"
    flags = ["--upstream", upstream.url]
    proc = ServerProcess(tiny_llama_dir, log, flags, backend="vllm-remote").wait_ready()
    yield proc
    proc.stop()


def chat(gateway: ServerProcess, **fields: Any) -> httpx.Response:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    return gateway.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "max_tokens": 3, **fields},
    )


def complete(gateway: ServerProcess, **fields: Any) -> httpx.Response:
    return gateway.post(
        "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 3, **fields}
    )


def test_chat_json_schema_is_forwarded(gateway: ServerProcess, upstream: FakeUpstream) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA}}
    assert sent_constraint(upstream, chat(gateway, response_format=fmt)) == {"json": SCHEMA}


def test_strict_json_schema_forbids_extra_properties(
    gateway: ServerProcess, upstream: FakeUpstream
) -> None:
    spec = {"name": "trip", "schema": SCHEMA, "strict": True}
    r = chat(gateway, response_format={"type": "json_schema", "json_schema": spec})
    assert sent_constraint(upstream, r) == {"json": SCHEMA, "disable_additional_properties": True}


def test_chat_regex_is_forwarded(gateway: ServerProcess, upstream: FakeUpstream) -> None:
    r = chat(gateway, structured_outputs={"regex": PLATE})
    assert sent_constraint(upstream, r) == {"regex": PLATE}


def test_named_tool_is_forwarded_as_its_parameters_schema(
    gateway: ServerProcess, upstream: FakeUpstream
) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    r = chat(gateway, tools=[WEATHER_TOOL], tool_choice=choice)
    sent = sent_constraint(upstream, r)
    # Tools may also close the schema (only the declared keys); never another kind.
    assert sent["json"] == SCHEMA and set(sent) <= {"json", "disable_additional_properties"}
    (call,) = r.json()["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": "<11><12><13>"}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"response_format": {"type": "json_object"}}, {"json_object": True}),
        ({"structured_outputs": {"choice": YES_NO}}, {"choice": YES_NO}),
        ({"guided_choice": YES_NO}, {"choice": YES_NO}),
        ({"guided_json": SCHEMA, "guided_whitespace_pattern": " ?"},
         {"json": SCHEMA, "whitespace_pattern": " ?"}),
        ({"structured_outputs": {"grammar": 'start: "a"', "backend": "xgrammar"}},
         {"grammar": 'start: "a"'}),  # vLLM's backend switch has no meaning for pe
    ],
)  # fmt: skip
def test_completion_constraints_are_forwarded(
    gateway: ServerProcess, upstream: FakeUpstream, fields: dict[str, Any], expected: Any
) -> None:
    assert sent_constraint(upstream, complete(gateway, **fields)) == expected


def test_plain_request_has_no_constraint(gateway: ServerProcess, upstream: FakeUpstream) -> None:
    r = complete(gateway, response_format={"type": "text"})
    assert r.status_code == 200, r.text
    assert "structured_outputs" not in upstream.bodies[-1]


def test_bad_constraint_is_refused_before_the_upstream(
    gateway: ServerProcess, upstream: FakeUpstream
) -> None:
    num_bodies = len(upstream.bodies)
    r = complete(gateway, structured_outputs={"regex": PLATE, "choice": YES_NO})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "structured_outputs.regex"
    assert len(upstream.bodies) == num_bodies


# --- vllm in process: vLLM takes pe's names and applies the constraint ------------------------


@pytest.mark.parametrize(
    "spec",
    [
        StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True),
        StructuredOutputsParams(json='{"type": "object"}', disable_additional_properties=True),
        StructuredOutputsParams(regex=PLATE),
        StructuredOutputsParams(choice=YES_NO),
        StructuredOutputsParams(grammar='start: "a"'),
        StructuredOutputsParams(json_object=True, whitespace_pattern=r"[ ]?"),
    ],
)
@pytest.mark.vllm
@requires_vllm
def test_vllm_params_take_pe_field_names(spec: StructuredOutputsParams) -> None:
    from pe_server.backends.vllm_backend import to_vllm_params

    vllm_spec = to_vllm_params(SamplingParams(structured_outputs=spec)).structured_outputs
    for name in ("json", "regex", "choice", "grammar", "json_object"):
        assert getattr(vllm_spec, name) == getattr(spec, name)
    for name in ("disable_any_whitespace", "disable_additional_properties", "whitespace_pattern"):
        assert getattr(vllm_spec, name) == getattr(spec, name)


def vllm_config(structured: dict[str, Any]) -> ServerConfig:
    values = {"model": "m", "backend": "vllm", "structured_outputs_config": structured}
    return ServerConfig.from_sources(values, {})


def test_server_json_options_reach_vllm_engine_config() -> None:
    cfg = vllm_config({"disable_any_whitespace": True, "whitespace_pattern": " ?"})
    argv = engine_argv(cfg, "/models/m")
    flag = argv.index("--structured-outputs-config")
    # vLLM has no whitespace_pattern option; its guidance backend takes the others.
    assert json.loads(argv[flag + 1]) == {"backend": "guidance", "disable_any_whitespace": True}
    assert "--structured-outputs-config" not in engine_argv(vllm_config({}), "/models/m")


@pytest.mark.vllm
@requires_vllm
def test_vllm_parses_the_forwarded_structured_outputs_config(vllm_tiny_dir: Path) -> None:
    """A real model folder: vLLM's argument parsing looks the model up (a made-up path is a
    Hugging Face repo id to it)."""
    from pe_server.backends.vllm_backend import build_engine_args

    cfg = vllm_config({"disable_any_whitespace": True, "disable_additional_properties": True})
    argv = engine_argv(cfg, str(vllm_tiny_dir))
    parsed = build_engine_args(argv).structured_outputs_config
    assert parsed.backend == "guidance"
    assert parsed.disable_any_whitespace and parsed.disable_additional_properties


@pytest.fixture(scope="module")
def vllm_server(
    vllm_tiny_dir: Path, vllm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp("vllm-structured")
    flags = ["--max-model-len", "256", "--seed", "0", "--download-dir", str(logs / "downloads")]
    proc = ServerProcess(vllm_tiny_dir, logs / "server.log", flags, env=vllm_env, backend="vllm")
    try:
        yield proc.wait_ready(600.0)
    finally:
        proc.stop(timeout=60)


def constrained_texts(server: ServerProcess, constraint: dict[str, Any]) -> list[str]:
    """Three sampled completions (n=3, temperature 1) under ``constraint``."""
    r = server.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "Answer:", "max_tokens": 32, "n": 3,
              "temperature": 1.0, "seed": 0, "structured_outputs": constraint},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert all(c["finish_reason"] == "stop" for c in choices), choices
    return [c["text"] for c in choices]


@pytest.mark.vllm
@requires_vllm
@pytest.mark.timeout(1200)
@pytest.mark.parametrize(
    ("constraint", "obeys"),
    [
        ({"choice": YES_NO}, lambda text: text in YES_NO),
        ({"regex": PLATE}, lambda text: re.fullmatch(PLATE, text)),
    ],
)
def test_vllm_output_obeys_the_constraint(
    vllm_server: ServerProcess, constraint: dict[str, Any], obeys: Any
) -> None:
    texts = constrained_texts(vllm_server, constraint)
    assert all(obeys(text) for text in texts), texts


@pytest.mark.vllm
@requires_vllm
@pytest.mark.timeout(1200)
def test_vllm_refuses_a_bad_regex_and_stays_up(vllm_server: ServerProcess) -> None:
    r = vllm_server.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "Hi", "max_tokens": 4,
              "structured_outputs": {"regex": "(a"}},
    )  # fmt: skip
    assert r.status_code == 400, r.text
    assert vllm_server.get("/health").status_code == 200
    assert constrained_texts(vllm_server, {"choice": YES_NO})
