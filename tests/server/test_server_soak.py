"""benchmarks/soak.py for 60 s (reference/security.md §12.23, shortened): mixed traffic with
random disconnects, then zero 5xx, zero leaked KV blocks and RSS growth under 5%."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_soak_60s(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(SOAK), "--duration", "60", "--model", str(tiny_llama_dir),
           "--concurrency", "6", "--out", str(out)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=360)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["passed"] and all(result["checks"].values())
    assert result["num_5xx"] == 0 and result["final"]["kv_used_blocks"] == 0
    assert result["num_disconnects"] > 0  # the run did exercise disconnects
    assert result["rss_mib"]["growth_pct"] < 5
