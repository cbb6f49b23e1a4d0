"""HTTP routes, one module per endpoint family."""

from __future__ import annotations

from pe_server.routes import chat, completions, embeds, health, models, tokenize

ROUTE_TABLES = (
    health.routes,
    models.routes,
    completions.routes,
    chat.routes,
    tokenize.routes,
    embeds.routes,
)
