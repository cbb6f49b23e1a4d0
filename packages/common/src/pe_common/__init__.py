"""pe_common: wire schema and tensor codec shared by the pe server, engine and client.

The wire types live in :mod:`pe_common.protocol`; the tensor codec in :mod:`pe_common.codec`.
Neither imports torch: the torch paths load it only when a torch tensor is asked for.
"""

from pe_common.codec import (
    EmbedsFormat,
    EmbedsLimits,
    decode_prompt_embeds,
    decode_prompt_embeds_numpy,
    encode_prompt_embeds,
    validate_prompt_embeds_tensor,
)
from pe_common.errors import InvalidRequestError, PEValidationError, PromptEmbedsError

__version__ = "0.1.0"

__all__ = [
    "EmbedsFormat",
    "EmbedsLimits",
    "InvalidRequestError",
    "PEValidationError",
    "PromptEmbedsError",
    "__version__",
    "decode_prompt_embeds",
    "decode_prompt_embeds_numpy",
    "encode_prompt_embeds",
    "validate_prompt_embeds_tensor",
]
