"""Size limits and the dtype table shared by every codec format."""

from __future__ import annotations

from dataclasses import dataclass

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")

# Element sizes of the payload dtypes the codec reads (float64 only from torch.save files).
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}

# Fixed overhead a container may add around the tensor bytes (zip headers, padding, records).
CONTAINER_SLACK_BYTES = 64 * 1024


@dataclass(frozen=True)
class EmbedsLimits:
    """Bounds applied while decoding one prompt-embeddings payload.

    ``max_bytes`` bounds one tensor after materialising (in the larger of the payload and the
    target dtype); every other limit bounds a container part before it is read.
    """

    max_bytes: int = 256 * 2**20
    max_rows: int = 1 << 20
    max_pickle_bytes: int = 4096
    max_header_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_rows", "max_pickle_bytes", "max_header_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"EmbedsLimits.{name} must be a positive int")

    @property
    def max_payload_bytes(self) -> int:
        """Largest decoded file (torch zip or safetensors) accepted before parsing it."""
        return (
            self.max_bytes + self.max_header_bytes + self.max_pickle_bytes + CONTAINER_SLACK_BYTES
        )

    @property
    def max_base64_chars(self) -> int:
        """Longest base64 text accepted before decoding it."""
        return 4 * -(-self.max_payload_bytes // 3)


def base64_length(num_bytes: int) -> int:
    """Length of the padded standard base64 text of ``num_bytes`` bytes."""
    return 4 * -(-num_bytes // 3)
