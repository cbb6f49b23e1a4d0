"""pe's wire schema: msgspec structs shared by the server and the client.

Request bodies (JSON or msgpack) are decoded through one entry point per request type,
which normalises the polymorphic fields and runs the model-free checks::

    req = decode_completion_request(body, "json")   # or "msgpack"
    req.prompt          # list[str] | list[list[int]] | None
    req.prompt_embeds   # list[str | bytes | RawEmbeds] | None

Responses are built from the structs and written with :func:`encode_json` /
:func:`encode_msgpack`. Every invalid body raises
:class:`~pe_common.errors.InvalidRequestError` naming the parameter.
"""

from pe_common.protocol.chat import (
    ChatCompletionChoice,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
)
from pe_common.protocol.chat_message import (
    ChatMessage,
    ContentPart,
    FunctionCall,
    PromptEmbedsPart,
    TextPart,
    ToolCall,
)
from pe_common.protocol.common import (
    EmbedsPayload,
    EmbedsRef,
    PromptTokensDetails,
    RawEmbeds,
    StreamOptions,
    Usage,
)
from pe_common.protocol.completion import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
)
from pe_common.protocol.decode import (
    BodyKind,
    decode_chat_request,
    decode_completion_request,
    decode_detokenize_request,
    decode_tokenize_request,
)
from pe_common.protocol.embeds import EmbedsDeleted, EmbedsList, EmbedsObject
from pe_common.protocol.encode import encode_json, encode_msgpack
from pe_common.protocol.error import ErrorInfo, ErrorResponse
from pe_common.protocol.limits import DEFAULT_LIMITS, RequestLimits
from pe_common.protocol.logprobs import (
    ChatCompletionLogprobs,
    ChatCompletionTokenLogprob,
    CompletionLogprobs,
    PromptLogprob,
    PromptLogprobs,
    TopLogprob,
)
from pe_common.protocol.model_list import ModelCard, ModelList
from pe_common.protocol.openapi import openapi_schema
from pe_common.protocol.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from pe_common.protocol.validation import (
    validate_chat_request,
    validate_completion_request,
    validate_detokenize_request,
    validate_tokenize_request,
)

__all__ = [
    "DEFAULT_LIMITS",
    "BodyKind",
    "ChatCompletionChoice",
    "ChatCompletionChunkChoice",
    "ChatCompletionLogprobs",
    "ChatCompletionMessage",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatCompletionStreamResponse",
    "ChatCompletionTokenLogprob",
    "ChatMessage",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "CompletionResponse",
    "CompletionStreamResponse",
    "ContentPart",
    "DeltaFunctionCall",
    "DeltaMessage",
    "DeltaToolCall",
    "DetokenizeRequest",
    "DetokenizeResponse",
    "EmbedsDeleted",
    "EmbedsList",
    "EmbedsObject",
    "EmbedsPayload",
    "EmbedsRef",
    "ErrorInfo",
    "ErrorResponse",
    "FunctionCall",
    "ModelCard",
    "ModelList",
    "PromptEmbedsPart",
    "PromptLogprob",
    "PromptLogprobs",
    "PromptTokensDetails",
    "RawEmbeds",
    "RequestLimits",
    "StreamOptions",
    "TextPart",
    "TokenizeRequest",
    "TokenizeResponse",
    "ToolCall",
    "TopLogprob",
    "Usage",
    "decode_chat_request",
    "decode_completion_request",
    "decode_detokenize_request",
    "decode_tokenize_request",
    "encode_json",
    "encode_msgpack",
    "openapi_schema",
    "validate_chat_request",
    "validate_completion_request",
    "validate_detokenize_request",
    "validate_tokenize_request",
]
