"""The packages' layering, enforced: who may import whom (issue 19).

- pe_common imports nothing of pe_engine, pe_server or pe_client;
- pe_client never imports torch, pe_engine or pe_server;
- pe_engine.core (sequences, blocks, scheduler, output processor, detokenizer) imports no
  model, attention, CUDA or input code at run time, except the engine loop (core/llm_engine.py,
  where DESIGN.md puts it), which wires the model runner in;
- CUDA-only modules (pe_engine.cuda, the Triton backend and kernels) are imported only inside
  functions that run on CUDA, never at module level elsewhere, so the CPU path never loads them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = {
    name: ROOT / "packages" / pkg / "src" / name
    for pkg, name in (
        ("common", "pe_common"),
        ("client", "pe_client"),
        ("engine", "pe_engine"),
        ("server", "pe_server"),
    )
}
ENGINE_LOOP = "packages/engine/src/pe_engine/core/llm_engine.py:"
CUDA_ONLY = (
    "pe_engine.cuda",
    "pe_engine.attention.triton_backend",
    "pe_engine.attention.kernels.triton_paged",
    "triton",
)


def imports(path: Path, *, module_level_only: bool) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in ``path``; with ``module_level_only`` those
    that run on import (not inside functions or ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    if module_level_only:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or (
                isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            ):
                skip.update(id(child) for child in ast.walk(node) if child is not node)
                if isinstance(node, ast.If):
                    skip.update(id(child) for child in node.body)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def offenders(
    package: str, forbidden: tuple[str, ...], *, module_level_only: bool, under: str = ""
) -> list[str]:
    found = []
    for path in sorted((SRC[package] / under).rglob("*.py")):
        for line, name in imports(path, module_level_only=module_level_only):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return found


def test_pe_common_imports_no_other_package() -> None:
    assert (
        offenders("pe_common", ("pe_engine", "pe_server", "pe_client"), module_level_only=False)
        == []
    )


def test_pe_client_imports_no_torch_nor_the_server() -> None:
    forbidden = ("torch", "pe_engine", "pe_server")
    assert offenders("pe_client", forbidden, module_level_only=True) == []


def test_engine_core_imports_no_model_code() -> None:
    """DESIGN.md puts the engine loop in core/; it is the one module that wires the model in."""
    forbidden = ("pe_engine.models", "pe_engine.attention", "pe_engine.cuda", "pe_engine.inputs")
    found = offenders("pe_engine", forbidden, module_level_only=True, under="core")
    assert [entry for entry in found if not entry.startswith(ENGINE_LOOP)] == []
    assert found, "the engine loop should import the model runner (is ENGINE_LOOP stale?)"


def test_cuda_only_modules_are_imported_lazily() -> None:
    found = []
    for package in ("pe_engine", "pe_server"):
        for entry in offenders(package, CUDA_ONLY, module_level_only=True):
            path = entry.split(":")[0]
            if "/pe_engine/cuda/" in path or "/kernels/triton_paged/" in path:
                continue  # the CUDA modules themselves
            if path.endswith("triton_backend.py"):
                continue
            found.append(entry)
    assert found == []


def test_importing_the_engine_loads_no_cuda_module() -> None:
    """At run time too: the CPU path's modules pull in nothing CUDA-only."""
    code = (
        "import sys, pe_engine.core.llm_engine, pe_engine.async_engine, pe_engine.llm, "
        "pe_engine.models.runner, pe_engine.inputs.chat, pe_server.app\n"
        f"bad = [m for m in sys.modules if m.startswith({CUDA_ONLY!r})]\n"
        "core = [m for m in sys.modules if m.startswith('pe_engine.core')]\n"
        "print(bad, bool(core))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] True"
