"""A request's constraint: ``response_format``, ``structured_outputs`` or the older
``guided_*`` fields -> one :class:`~pe_engine.sampling_params.StructuredOutputsParams`.

pe never drops a constraint: each is applied or refused with a 400 naming the field. At most
one source per request (vLLM's rule); a ``response_format`` of ``{"type": "text"}`` is none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pe_server.errors import APIError

if TYPE_CHECKING:
    from pe_common.protocol.common import GenerateFields
    from pe_engine.sampling_params import SamplingParams, StructuredOutputsParams
    from pe_server.config import StructuredOutputsConfig
    from pe_server.state import ServerState

_KINDS = ("json", "regex", "choice", "grammar", "json_object")
_OPTIONS = {
    "disable_any_whitespace": bool,
    "disable_additional_properties": bool,
    "whitespace_pattern": str,
}
# vLLM's own bookkeeping and fallback switches: meaningless with pe's one grammar engine.
_NO_EFFECT = ("disable_fallback", "backend", "_backend", "_backend_was_auto")
_GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


@dataclass(frozen=True)
class Constraint:
    """A request's constraint and the request field it came from (named in errors)."""

    params: StructuredOutputsParams
    param: str


async def constrain(
    state: ServerState, params: SamplingParams, constraint: Constraint | None
) -> SamplingParams:
    """``params`` with the constraint, compiled by the backend (off the event loop and the
    engine thread, within a time budget) before the request is submitted."""
    if constraint is None:
        return params
    await state.backend.compile_constraint(constraint)
    return dataclasses.replace(params, structured_outputs=constraint.params)


def invalid(message: str, param: str, code: str = "invalid_parameter") -> APIError:
    return APIError.bad_request(message, code=code, param=param)


def request_constraint(req: GenerateFields, defaults: StructuredOutputsConfig) -> Constraint | None:
    """The one constraint of ``req``, or None; a 400 for a bad or doubled one. ``defaults``:
    the server's (``--structured-outputs-config``), under the request's own options."""
    sources = (_from_response_format, _from_object, _from_guided)
    found = [c for c in (source(req, defaults) for source in sources) if c]
    if len(found) > 1:
        raise invalid(
            "You can only use one kind of constraints for structured outputs: "
            f"{' and '.join(c.param for c in found)} were both given.",
            found[1].param,
        )
    return found[0] if found else None


def make_params(
    fields: dict[str, Any], param: str, defaults: StructuredOutputsConfig | None = None
) -> Constraint:
    """The engine's params of ``fields``, the server's defaults filling the options unset."""
    from pe_engine.sampling_params import StructuredOutputsParams

    if defaults is not None:
        options = defaults.model_dump(exclude={"backend"}, exclude_defaults=True)
        fields = {**options, **fields}
    try:
        return Constraint(StructuredOutputsParams(**fields), param)
    except ValueError as exc:
        raise invalid(str(exc), param) from None


def _from_response_format(
    req: GenerateFields, defaults: StructuredOutputsConfig
) -> Constraint | None:
    fmt = req.response_format
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return make_params({"json_object": True}, "response_format", defaults)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise invalid(
                'When response_format type is "json_schema", the "json_schema" field must be '
                "provided.",
                "response_format.json_schema",
            )
        schema = spec.get("schema", {})  # OpenAI's default: any JSON
        if not isinstance(schema, dict):
            raise invalid("`schema` must be a JSON object.", "response_format.json_schema.schema")
        fields: dict[str, Any] = {"json": schema}
        if spec.get("strict") is True:  # OpenAI's strict mode: only the declared properties
            fields["disable_additional_properties"] = True
        return make_params(fields, "response_format.json_schema.schema", defaults)
    if kind == "structural_tag":
        raise invalid(
            'response_format type "structural_tag" is not supported by pe.',
            "response_format.type",
            code="unsupported_parameter",
        )
    raise invalid(
        'response_format type must be one of "text", "json_object" or "json_schema".',
        "response_format.type",
    )


def _from_object(req: GenerateFields, defaults: StructuredOutputsConfig) -> Constraint | None:
    spec = req.structured_outputs
    if spec is None:
        return None
    fields: dict[str, Any] = {}
    for key, value in spec.items():
        param = f"structured_outputs.{key}"
        if key in _NO_EFFECT or value is None:
            continue
        if key == "structural_tag":
            raise invalid("structural_tag is not supported by pe.", param, "unsupported_parameter")
        if key in _OPTIONS:
            if not isinstance(value, _OPTIONS[key]):
                raise invalid(f"`{key}` must be a {_OPTIONS[key].__name__}.", param)
        elif key in _KINDS:
            _check_kind(key, value, param)
        else:
            raise invalid(f"Unknown structured outputs field `{key}`.", param)
        fields[key] = value
    if not any(fields.get(kind) not in (None, False) for kind in _KINDS):
        raise invalid(
            "structured_outputs needs one of json, regex, choice, grammar or json_object.",
            "structured_outputs",
        )
    kind = next(k for k in _KINDS if fields.get(k) not in (None, False))
    return make_params(fields, f"structured_outputs.{kind}", defaults)


def _from_guided(req: GenerateFields, defaults: StructuredOutputsConfig) -> Constraint | None:
    given = [name for name in _GUIDED if getattr(req, name) is not None]
    if not given:
        if req.guided_whitespace_pattern is not None:
            raise invalid(
                "guided_whitespace_pattern applies to guided_json only.",
                "guided_whitespace_pattern",
            )
        return None
    if len(given) > 1:
        raise invalid(
            f"You can only use one kind of guided decoding but {', '.join(given)} were given.",
            given[1],
        )
    name = given[0]
    kind = name.removeprefix("guided_")
    value = getattr(req, name)
    _check_kind(kind, value, name)
    fields: dict[str, Any] = {kind: value}
    if req.guided_whitespace_pattern is not None:
        fields["whitespace_pattern"] = req.guided_whitespace_pattern
    return make_params(fields, name, defaults)


def _check_kind(kind: str, value: Any, param: str) -> None:
    if kind == "json" and not isinstance(value, (dict, str)):
        raise invalid("A JSON schema must be an object or its JSON text.", param)
    if kind in ("regex", "grammar") and not isinstance(value, str):
        raise invalid(f"`{kind}` must be a string.", param)
    if kind == "choice" and not (
        isinstance(value, list) and value and all(isinstance(v, str) for v in value)
    ):
        raise invalid("`choice` must be a non-empty list of strings.", param)
    if kind == "json_object" and not isinstance(value, bool):
        raise invalid("`json_object` must be a boolean.", param)
    if isinstance(value, str) and "\x00" in value:
        raise invalid(f"`{kind}` must not contain NUL characters.", param)
