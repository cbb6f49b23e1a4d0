"""``--backend vllm-remote --upstream URL``: pe's API in front of ``vllm serve --enable-prompt-embeds``.

pe parses, validates and decodes the request, renders chat templates and builds each prompt
itself; the upstream only ever receives ``/v1/completions`` requests: token ids for text-only
prompts, or one full-length ``prompt_embeds`` tensor (the model's embedding rows with the
user's rows spliced in) in vLLM's base64 ``torch.save`` format. The answer is always streamed
from the upstream and its chunks turned into pe's deltas, so pe's own streaming, usage and
logprobs formatting apply. Upstream errors keep their HTTP status.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp

from pe_common.codec import encode_prompt_embeds
from pe_engine.outputs import CompletionOutput, Logprob, RequestOutput
from pe_engine.prompt import Prompt
from pe_engine.sampling_params import SamplingParams
from pe_server.backends import BackendUnavailableError
from pe_server.backends.base import BackendStats, ModelInfo
from pe_server.backends.embedding_table import EmbeddingTable
from pe_server.backends.vllm_base import VllmBaseBackend
from pe_server.backends.vllm_mapping import DeltaMerger, sampling_fields, structured_fields
from pe_server.config import ServerConfig
from pe_server.errors import APIError

log = logging.getLogger("pe_server")
# Longest upstream error message passed on to the client.
MAX_UPSTREAM_MESSAGE = 1000
TOKEN_ID_PREFIX = "token_id:"
CONNECT_TIMEOUT_S = 10.0
# One SSE line of the upstream (a chunk with its logprobs) fits easily.
READ_BUFSIZE = 2**20
JSON_HEADERS = {"Content-Type": "application/json"}


class VllmRemoteBackend(VllmBaseBackend):
    """:class:`~pe_server.backends.base.Backend` forwarding to a vLLM OpenAI server."""

    name = "vllm-remote"

    def __init__(self, config: ServerConfig) -> None:
        if not config.upstream:
            raise ValueError("--backend vllm-remote needs --upstream URL")
        super().__init__(config)
        self.upstream = config.upstream.rstrip("/")
        if self.upstream.endswith("/v1"):
            self.upstream = self.upstream[: -len("/v1")]
        self.upstream_model = ""
        self.table: EmbeddingTable | None = None
        self._session: aiohttp.ClientSession | None = None
        self._responses: dict[str, aiohttp.ClientResponse] = {}

    @property
    def is_healthy(self) -> bool:
        return self._session is not None and not self._session.closed

    def _headers(self) -> dict[str, str]:
        key = self._config.upstream_api_key
        return {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}

    async def start(self) -> None:
        files = await self.load_files()
        self._session = aiohttp.ClientSession(
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
            read_bufsize=READ_BUFSIZE,
        )
        try:
            self.upstream_model, upstream_len = await self._upstream_model()
        except BaseException:
            await self._session.close()
            raise
        self.table = await asyncio.to_thread(EmbeddingTable.load, files.model_dir, files.dtype)
        limits = [v for v in (self._config.max_model_len, upstream_len) if v]
        max_len = min(limits) if limits else files.max_position_embeddings
        self.info = ModelInfo(
            hidden_size=files.hidden_size,
            max_model_len=int(max_len),
            dtype=files.dtype,
            vocab_size=files.vocab_size,
        )
        log.info(
            "vllm-remote: upstream %s serves %r (max_model_len %s)",
            self.upstream,
            self.upstream_model,
            upstream_len,
        )

    async def _upstream_model(self) -> tuple[str, int | None]:
        """The upstream's first served model name and its context length."""
        assert self._session is not None
        try:
            async with self._session.get(f"{self.upstream}/v1/models") as resp:
                if resp.status != 200:
                    raise BackendUnavailableError(
                        f"the upstream {self.upstream}/v1/models answered HTTP {resp.status}"
                        + (" (check --upstream-api-key)" if resp.status in (401, 403) else "")
                    )
                models = (await resp.json())["data"]
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise BackendUnavailableError(
                f"cannot reach the upstream vLLM at {self.upstream} ({type(exc).__name__}); "
                "start `vllm serve MODEL --enable-prompt-embeds` there first"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendUnavailableError(
                f"{self.upstream}/v1/models did not answer like a vLLM server ({exc!r:.200})"
            ) from None
        if not models:
            raise BackendUnavailableError("the upstream vLLM serves no model")
        return str(models[0]["id"]), models[0].get("max_model_len")

    async def shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def abort(self, request_id: str) -> None:
        # Closing the connection is how vLLM's server learns to abort the request.
        resp = self._responses.pop(request_id, None)
        if resp is not None:
            resp.close()

    def stats(self) -> BackendStats:
        return BackendStats(num_running=len(self._responses))

    async def generate(
        self, prompt: Prompt, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        self.check_request(prompt, params)
        # Base64 and JSON of a large tensor are built off the event loop.
        body = await asyncio.to_thread(self.request_body, prompt, params)
        url = f"{self.upstream}/v1/completions"
        assert self._session is not None
        try:
            async with self._session.post(url, data=body, headers=JSON_HEADERS) as resp:
                if resp.status != 200:
                    raise upstream_error(resp.status, await resp.read())
                self._responses[request_id] = resp
                merger = StreamMerger(request_id, prompt, params)
                async for chunk in sse_events(resp):
                    output = merger.add(chunk)
                    if output is not None:
                        yield output
                if not merger.finished:
                    raise upstream_unavailable("the upstream stream ended early")
        except aiohttp.ClientError as exc:
            log.warning("upstream request %s failed: %r", request_id, exc)
            raise upstream_unavailable("the upstream vLLM server could not be reached") from exc
        finally:
            self._responses.pop(request_id, None)

    def request_body(self, prompt: Prompt, params: SamplingParams) -> bytes:
        """The upstream ``/v1/completions`` JSON body for one prompt (always streamed)."""
        body: dict[str, Any] = {"model": self.upstream_model, **remote_sampling_fields(params)}
        if prompt.prompt_embeds is None:
            body["prompt"] = list(prompt.token_ids)
        else:
            assert self.table is not None
            body["prompt_embeds"] = encode_prompt_embeds(
                self.table.prompt_embeds(prompt), format="torch"
            )
        body.update(
            stream=True,
            stream_options={"include_usage": False},
            return_token_ids=True,
            return_tokens_as_token_ids=params.logprobs is not None,
        )
        if prompt.cache_salt is not None:  # the tenant's salt: vLLM's cache stays partitioned
            body["cache_salt"] = prompt.cache_salt
        structured = structured_fields(params)
        if structured is not None:
            body["structured_outputs"] = structured
        return json.dumps(body).encode()


def remote_sampling_fields(params: SamplingParams) -> dict[str, Any]:
    """pe's SamplingParams as vLLM completions fields; unset ones left out, no top-k as -1."""
    fields = sampling_fields(params)
    fields["top_k"] = params.top_k or -1
    return {k: v for k, v in fields.items() if v is not None}


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an SSE stream, until ``[DONE]``; an error event raises."""
    async for raw in resp.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[len(b"data:") :].strip()
        if data == b"[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            code = event["error"].get("code") if isinstance(event["error"], dict) else None
            raise upstream_error(code if isinstance(code, int) and code >= 400 else 500, data)
        yield event


class StreamMerger(DeltaMerger):
    """Upstream completion chunks (already deltas) -> pe's delta ``RequestOutput`` objects."""

    def __init__(self, request_id: str, prompt: Prompt, params: SamplingParams) -> None:
        super().__init__(request_id, prompt, params, initial_logprob=0.0)

    def add(self, chunk: dict[str, Any]) -> RequestOutput | None:
        choices = chunk.get("choices") or []
        if not choices:
            return None
        return self._merge({int(choice["index"]): choice for choice in choices})

    def _delta(self, index: int, choice: dict[str, Any] | None) -> CompletionOutput:
        choice = choice or {}
        new_ids = [int(t) for t in choice.get("token_ids") or []]
        steps: list[dict[int, Logprob]] | None = [] if self.wants_logprobs else None
        logprobs = choice.get("logprobs")
        if steps is not None and logprobs:
            steps = parse_logprobs(logprobs)
            for token_id, step in zip(new_ids, steps, strict=False):
                if token_id in step:
                    total = self.cumulative_logprobs[index] or 0.0
                    self.cumulative_logprobs[index] = total + step[token_id].logprob
        finish_reason = choice.get("finish_reason")
        return CompletionOutput(
            index=index,
            text=choice.get("text") or "",
            token_ids=new_ids,
            cumulative_logprob=self.cumulative_logprobs[index],
            logprobs=steps,
            finish_reason=finish_reason,
            stop_reason=choice.get("stop_reason") if finish_reason is not None else None,
        )


def parse_logprobs(logprobs: dict[str, Any]) -> list[dict[int, Logprob]]:
    """vLLM completions logprobs (tokens as ``token_id:N``) -> one ``{id: Logprob}`` per token."""
    steps: list[dict[int, Logprob]] = []
    tokens = logprobs.get("tokens") or []
    token_logprobs = logprobs.get("token_logprobs") or []
    top_logprobs = logprobs.get("top_logprobs") or [None] * len(tokens)
    for token, value, top in zip(tokens, token_logprobs, top_logprobs, strict=False):
        entries = {parse_token_id(t): float(lp) for t, lp in (top or {}).items()}
        if value is not None:
            entries.setdefault(parse_token_id(token), float(value))
        ordered = sorted(entries.items(), key=lambda item: -item[1])
        steps.append({tid: Logprob(lp, rank=rank) for rank, (tid, lp) in enumerate(ordered, 1)})
    return steps


def parse_token_id(token: str) -> int:
    if not token.startswith(TOKEN_ID_PREFIX):
        raise upstream_unavailable("the upstream did not return token ids in its logprobs")
    return int(token[len(TOKEN_ID_PREFIX) :])


def upstream_error(status: int, body: bytes) -> APIError:
    """The upstream's error with its status; its message (bounded) and param when it has them."""
    message, param = f"The upstream vLLM server answered HTTP {status}.", None
    try:
        error = json.loads(body).get("error") or {}
        if isinstance(error.get("message"), str) and error["message"]:
            message = error["message"][:MAX_UPSTREAM_MESSAGE]
        param = error.get("param") if isinstance(error.get("param"), str) else None
    except (ValueError, AttributeError):
        pass
    return APIError(status, message, code="upstream_error", param=param)


def upstream_unavailable(message: str) -> APIError:
    return APIError(502, message[0].upper() + message[1:] + ".", code="upstream_unavailable")
