"""``vllm serve`` flags on ``pe-server serve``: the ones pe honours, and why it refuses the rest.

A vLLM engine flag stays as its tokens in ``ServerConfig.vllm_args``: ``--backend vllm`` hands
them to vLLM's engine as given, while pe's own backends accept the values they honour with vLLM's
meaning (or that mean nothing to pe, such as ``--runner generate``) and refuse the others at
start-up with the flag, its value and the backend that has it. Front-end flags (TLS, CORS, ...)
are pe's business on every backend and never reach vLLM.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

REMOTE_REFUSAL = (
    "with --backend vllm-remote the upstream vLLM server runs the model: give the flag to its "
    "`vllm serve`"
)


@dataclass(frozen=True)
class VllmFlag:
    """One vLLM flag: its option strings and the values pe honours.

    A switch (no ``metavar``) lists its ``--no-`` form among its names, and its value is the
    option string given. ``refusal`` says why pe cannot honour another value; ``{backend}`` is
    filled in.
    """

    names: tuple[str, ...]
    accepted: frozenset[str]
    refusal: str
    help: str
    metavar: str | None = None
    # pe serves completions and chat only: refused on every backend, vllm included.
    is_generation_only: bool = False

    def refuses(self, value: str) -> bool:
        return value not in self.accepted


def switch(name: str, accepted: Sequence[str], refusal: str, help: str) -> VllmFlag:
    no_name = "--no-" + name.removeprefix("--")
    return VllmFlag((name, no_name), frozenset(accepted), refusal, help)


def option(
    names: Sequence[str],
    accepted: Sequence[str],
    refusal: str,
    help: str,
    *,
    metavar: str,
    is_generation_only: bool = False,
) -> VllmFlag:
    return VllmFlag(tuple(names), frozenset(accepted), refusal, help, metavar, is_generation_only)


ONE_DEVICE = "the {backend} backend runs the model on one device; use --backend vllm"
ONE_DEVICE_HELP = "1 accepted; more with --backend vllm"
GENERATION_ONLY = (
    "pe serves completions and chat from a generating model only (vllm serve runs the others)"
)
REQUEST_LOGS = (
    "the {backend} backend logs one access line per request (id, route, status, sizes, time), "
    "never its prompt or parameters; --backend vllm passes the flag to vLLM's engine"
)
ENGINE_FLAGS = (
    option(("--runner",), ["auto", "generate"], GENERATION_ONLY,
           "auto and generate accepted: pe only generates", metavar="{auto,generate}",
           is_generation_only=True),
    option(("--task",), ["auto", "generate"], GENERATION_ONLY,
           "(deprecated in vLLM) auto and generate accepted", metavar="{auto,generate}",
           is_generation_only=True),
    switch("--trust-remote-code", ["--trust-remote-code", "--no-trust-remote-code"], "",
           "accepted: pe loads only the architectures it implements and never runs code "
           "from the model repository"),
    option(("--tensor-parallel-size", "-tp"), ["1"], ONE_DEVICE, ONE_DEVICE_HELP, metavar="N"),
    option(("--pipeline-parallel-size", "-pp"), ["1"], ONE_DEVICE, ONE_DEVICE_HELP, metavar="N"),
    option(("--data-parallel-size", "-dp"), ["1"], ONE_DEVICE, ONE_DEVICE_HELP, metavar="N"),
    option(("--generation-config",), ["auto", "vllm"],
           "the {backend} backend reads generation_config.json (its eos_token_id) from the "
           "model directory only; copy it there, or use --backend vllm",
           "auto or vllm: pe takes the EOS ids from the model's generation_config.json and no "
           "sampling defaults", metavar="{auto,vllm}"),
    switch("--disable-log-requests", ["--disable-log-requests"], REQUEST_LOGS,
           "accepted: pe never logs request contents"),
    switch("--enable-log-requests", ["--no-enable-log-requests"], REQUEST_LOGS,
           "refused: pe never logs request contents"),
    option(("--tokenizer-mode",), ["auto", "hf"],
           "the {backend} backend loads the model's Hugging Face tokenizer (its fast one when it "
           "has one); use --backend vllm", "auto and hf accepted", metavar="{auto,hf}"),
    option(("--kv-cache-dtype",), ["auto"],
           "the {backend} backend keeps the KV cache in the model's dtype; use --backend vllm",
           "auto accepted", metavar="auto"),
    switch("--enable-lora", ["--no-enable-lora"],
           "the {backend} backend serves no LoRA adapters; use --backend vllm",
           "refused: no LoRA adapters"),
    switch("--enable-chunked-prefill", ["--enable-chunked-prefill"],
           "pe cannot turn it off (the native engine always prefills long prompts in chunks of "
           "--max-num-batched-tokens); use --backend vllm",
           "accepted: long prompts are always prefilled in chunks"),
    option(("--load-format",), ["auto", "safetensors"],
           "the {backend} backend loads safetensors weights only; use --backend vllm",
           "auto and safetensors accepted", metavar="{auto,safetensors}"),
    option(("--download-dir",), [],
           "the {backend} backend serves a model directory and downloads nothing: download it "
           "first (hf download REPO --local-dir DIR), or use --backend vllm",
           "refused: MODEL is a local directory", metavar="DIR"),
    option(("--revision",), [],
           "the {backend} backend serves the model directory as it is: check the revision out "
           "there, or use --backend vllm", "refused: MODEL is a local directory",
           metavar="REV"),
)  # fmt: skip
TLS = "pe serves plain HTTP: terminate TLS in a reverse proxy in front of it"
FRONTEND_FLAGS = (
    option(("--response-role",), ["assistant"], "pe answers chats with role assistant",
           "assistant accepted", metavar="assistant"),
    option(("--root-path",), [], "pe serves its routes at /: strip the prefix in the proxy",
           "refused", metavar="PATH"),
    option(("--allowed-origins",), [], "pe sends no CORS headers: add them in a reverse proxy",
           "refused", metavar="JSON"),
    option(("--ssl-keyfile",), [], TLS, "refused: plain HTTP", metavar="FILE"),
    option(("--ssl-certfile",), [], TLS, "refused: plain HTTP", metavar="FILE"),
)  # fmt: skip


class _KeepFlag(argparse.Action):
    """Appends what :meth:`kept` makes of each occurrence of the flag to ``dest``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        kept = self.kept(option_string, values)
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), *kept])

    def kept(self, option_string: str | None, values: Any) -> list[Any]:
        raise NotImplementedError


class KeepTokens(_KeepFlag):
    """Appends the flag as given (its option string, then its value) to ``dest``."""

    def kept(self, option_string: str | None, values: Any) -> list[Any]:
        return [option_string] if self.nargs == 0 else [option_string, values]


class KeepPairs(_KeepFlag):
    """Appends ``(option string, value)`` to ``dest``; a switch's value is its option string."""

    def kept(self, option_string: str | None, values: Any) -> list[Any]:
        return [(option_string, option_string if self.nargs == 0 else values)]


def add_flags(
    group: argparse._ArgumentGroup,
    flags: Sequence[VllmFlag],
    dest: str,
    action: type[argparse.Action] = KeepTokens,
) -> None:
    for flag in flags:
        group.add_argument(
            *flag.names,
            action=action,
            dest=dest,
            nargs=0 if flag.metavar is None else None,
            metavar=flag.metavar,
            help=flag.help,
        )


def find_flags(
    tokens: Sequence[str], flags: Sequence[VllmFlag]
) -> tuple[list[tuple[VllmFlag, str, str]], list[str]]:
    """``(flag, option string, value)`` for each of ``flags`` in ``tokens``, and the rest."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    add_flags(parser.add_argument_group(), flags, "given", KeepPairs)
    try:
        namespace, others = parser.parse_known_args(list(tokens))
    except argparse.ArgumentError as exc:
        raise ValueError(str(exc)) from None
    by_name = {name: flag for flag in flags for name in flag.names}
    return [(by_name[name], name, value) for name, value in namespace.given or []], others


def refusal_message(flag: VllmFlag, name: str, value: str, reason: str) -> str:
    return f"{name if flag.metavar is None else f'{name} {value}'}: {reason}"


def check_engine_args(tokens: Sequence[str], backend: str) -> None:
    """Raises ValueError, naming the flag, for a vLLM engine flag this backend cannot honour.

    ``--backend vllm`` takes them all (vLLM checks them) but a non-generating runner; pe's own
    backends accept the values of :data:`ENGINE_FLAGS` they honour and nothing else.
    """
    found, others = find_flags(tokens, ENGINE_FLAGS)
    for flag, name, value in found:
        if not flag.refuses(value) or (backend == "vllm" and not flag.is_generation_only):
            continue
        if backend == "vllm-remote" and not flag.is_generation_only:
            raise ValueError(refusal_message(flag, name, value, REMOTE_REFUSAL))
        raise ValueError(refusal_message(flag, name, value, flag.refusal.format(backend=backend)))
    if others and backend != "vllm":
        raise ValueError(
            f"unrecognized arguments: {' '.join(others)} "
            "(vLLM engine flags are only passed through with --backend vllm)"
        )


def check_frontend_args(tokens: Sequence[str]) -> None:
    """Raises ValueError, naming the flag, for a vLLM front-end flag pe cannot honour."""
    found, _ = find_flags(tokens, FRONTEND_FLAGS)
    for flag, name, value in found:
        if flag.refuses(value):
            raise ValueError(refusal_message(flag, name, value, flag.refusal))
