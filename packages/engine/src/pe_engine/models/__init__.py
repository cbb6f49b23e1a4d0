"""Model implementations and their weight loader."""

from pe_engine.models.loader import SUPPORTED_ARCHITECTURES, load_model

__all__ = ["SUPPORTED_ARCHITECTURES", "load_model"]
