"""Every code block in README.md, run: against a real server on the demo model where it talks to
one, through the server's own argument parser where it starts one, against tox.ini and .ci/run
where it is a set-up command."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pe_server.cli import build_parser, config_from_args
from pe_server.launch import free_port, stop_process, wait_http_ready

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)```", README, re.S)]
PORT_IN_README = "127.0.0.1:8000"


def commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]


def serve_commands() -> list[str]:
    return [c for lang, b in BLOCKS if lang == "bash" for c in commands(b) if "pe-server" in c]


@pytest.fixture(scope="module")
def base(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tour's server command, run as written except for the port."""
    port = free_port()
    argv = shlex.split(serve_commands()[0])[1:]
    argv[argv.index("--port") + 1] = str(port)
    log_path = tmp_path_factory.mktemp("readme") / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pe_server", *argv], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        name = "the README's server command"
        wait_http_ready(proc, f"http://127.0.0.1:{port}/health", 180, log_path=log_path, name=name)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc, timeout=30)


def test_setup_commands_are_what_ci_runs() -> None:
    lang, first = BLOCKS[0]
    assert lang == "bash"
    assert [c.split("&&")[-1].strip() for c in commands(first)] == ["tox -e demo", "tox"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m tox\n" in ci and "python3 -m tox -e demo" in ci


def test_tox_envs_named_in_the_readme_exist() -> None:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "tox.ini")
    envs = {s.removeprefix("testenv:") for s in ini.sections() if s.startswith("testenv:")}
    named = set(re.findall(r"tox -e ([\w,]+)", README))
    for group in named:
        assert set(group.split(",")) <= envs, group


@pytest.mark.parametrize("command", serve_commands())
def test_server_commands_parse(command: str) -> None:
    """Each command's flags parse and make a valid config, as ``pe-server`` itself checks them
    (flags after the model that pe does not know are vLLM's, with ``--backend vllm``)."""
    args, vllm_args = build_parser().parse_known_args(shlex.split(command)[1:])
    assert args.command == "serve"
    config_from_args(args, vllm_args)


@pytest.mark.parametrize(
    "index", [i for i, (lang, b) in enumerate(BLOCKS) if lang == "bash" and "curl " in b]
)
def test_curl_blocks(base: str, index: int) -> None:
    script = BLOCKS[index][1].replace(PORT_IN_README, base)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"choices"' in out.stdout, out.stdout


@pytest.mark.parametrize("index", [i for i, (lang, _) in enumerate(BLOCKS) if lang == "python"])
def test_python_blocks(base: str, index: int, tmp_path: Path) -> None:
    script = tmp_path / f"block{index}.py"
    script.write_text(BLOCKS[index][1].replace(PORT_IN_README, base))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip()
