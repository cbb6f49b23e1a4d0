"""Hardened prompt-embeddings tensor codec.

Decoding never unpickles, never trusts declared sizes before checking them against the
payload and the limits, and returns one owned, contiguous, finite 2-D tensor. The numpy
entry points and the parsers do not import torch.
"""

from pe_common.codec.decode import decode_prompt_embeds, decode_prompt_embeds_numpy
from pe_common.codec.encode import EmbedsFormat, encode_prompt_embeds
from pe_common.codec.limits import SUPPORTED_DTYPES, EmbedsLimits
from pe_common.codec.validate import validate_prompt_embeds_tensor
from pe_common.errors import PromptEmbedsError

ERROR_CODES = (
    "invalid_base64",
    "unsupported_format",
    "unsupported_layout",
    "unsupported_tensor_kind",
    "unsupported_dtype",
    "invalid_shape",
    "size_mismatch",
    "hidden_size_mismatch",
    "empty_prompt",
    "non_finite_values",
    "too_large",
    "invalid_safetensors",
    "invalid_sparse",
)

__all__ = [
    "ERROR_CODES",
    "SUPPORTED_DTYPES",
    "EmbedsFormat",
    "EmbedsLimits",
    "PromptEmbedsError",
    "decode_prompt_embeds",
    "decode_prompt_embeds_numpy",
    "encode_prompt_embeds",
    "validate_prompt_embeds_tensor",
]
