"""The server's version, as /version reports it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pe-server")
except PackageNotFoundError:  # running from a source tree without metadata
    __version__ = "0.0.0"


def version_info() -> dict[str, str]:
    return {"version": __version__}
