"""pe-client: the Python SDK for pe and vLLM servers that take prompt embeddings.

::

    import numpy as np
    from pe_client import PEClient
    from pe_client.messages import user

    with PEClient() as client:  # $PE_BASE_URL, else http://127.0.0.1:8000/v1
        reply = client.chat.completions.create(
            model="demo", messages=[user("Summarise:", doc_embeds, "in one line")]
        )
        print(reply.choices[0].message.content)

``import pe_client`` never imports torch: numpy arrays are first-class, torch tensors are
recognised without importing it.
"""

from pe_client._base import NOT_GIVEN, NotGiven, RequestOptions
from pe_client._version import __version__
from pe_client.client import AsyncPEClient, PEClient
from pe_client.embeds_object import EmbedsObject
from pe_client.errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    MissingDependencyError,
    NotFoundError,
    PEClientError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from pe_client.streaming import AsyncStream, Stream
from pe_client.tensors import EmbedsFormat, RawTensor, encode_embeds, load_embeds_file

__all__ = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncPEClient",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "EmbedsFormat",
    "EmbedsObject",
    "InternalServerError",
    "MissingDependencyError",
    "NotFoundError",
    "NotGiven",
    "PEClient",
    "PEClientError",
    "PermissionDeniedError",
    "RateLimitError",
    "RawTensor",
    "RequestOptions",
    "RequestTooLargeError",
    "ServiceUnavailableError",
    "Stream",
    "UnprocessableEntityError",
    "__version__",
    "encode_embeds",
    "load_embeds_file",
]
