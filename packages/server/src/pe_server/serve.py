"""Running the app: bind, print the ready line, and drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from pe_server.app import create_app
from pe_server.config import ServerConfig
from pe_server.header_timeout import guard_connections
from pe_server.state import STATE, ServerState

log = logging.getLogger("pe_server")
# Seconds aiohttp waits for handlers (twice) once the drain deadline has passed.
SHUTDOWN_GRACE_S = 2.0


async def serve(config: ServerConfig) -> int:
    """Serve until SIGTERM/SIGINT, then drain; returns the process exit status."""
    app = create_app(config)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        auto_decompress=False,  # compressed bodies get 415, never an inflater
        access_log=None,
        keepalive_timeout=config.keepalive_timeout,
        shutdown_timeout=SHUTDOWN_GRACE_S,
    )
    await runner.setup()  # starts the backend: loads the model
    state = app[STATE]
    guard_connections(
        runner,
        config.header_read_timeout,
        lambda: state.metrics.rejections.labels("header_timeout").inc(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, config.host, config.port, shutdown_timeout=SHUTDOWN_GRACE_S)
        await site.start()
        print_ready(app[STATE], runner.addresses)
        await stop.wait()
        log.info("shutdown requested: draining (up to %.0f s)", config.drain_timeout)
        await drain(app[STATE], config.drain_timeout)
    finally:
        await runner.cleanup()  # cancels what is left (its engine requests abort), stops backend
    log.info("pe-server stopped")
    return 0


def print_ready(state: ServerState, addresses: list[object]) -> None:
    host, port = state.config.host, state.config.port
    for address in addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            host, port = str(address[0]), int(address[1])
            break
    shown = f"[{host}]" if ":" in host else host
    embeds = "on" if state.config.enable_prompt_embeds else "off"
    print(
        f"pe-server ready: model {state.model_name!r} on http://{shown}:{port}/v1 "
        f"(backend {state.backend.name}, prompt embeds {embeds}, "
        f"api key {'required' if state.auth.is_enabled else 'off'})",
        flush=True,
    )


async def drain(state: ServerState, timeout: float) -> None:
    """Readiness goes 503 and new requests are refused; in-flight ones finish until the deadline."""
    state.is_draining = True
    deadline = time.monotonic() + timeout
    while state.admission.num_requests > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if state.admission.num_requests:
        log.warning("drain deadline reached: cancelling %d requests", state.admission.num_requests)
