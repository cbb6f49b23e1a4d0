"""pe_client never imports torch, and works (or fails clearly) where torch cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_importing_every_module_leaves_torch_unimported() -> None:
    result = run_python(
        """
        import sys
        import pe_client, pe_client.cli, pe_client.messages, pe_client.openai_compat
        import pe_client.params, pe_client.resources, pe_client.tensors
        import numpy as np
        from pe_client.messages import user
        user("a", np.zeros((2, 4), np.float32), "b")
        pe_client.encode_embeds(np.zeros((2, 4), np.float16), "raw")
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_torch_format_fails_clearly_when_torch_cannot_be_imported() -> None:
    result = run_python(
        """
        import sys
        sys.modules["torch"] = None  # import torch now raises ImportError
        import numpy as np
        import pe_client
        from pe_client.openai_compat import completion_extra_body
        x = np.ones((2, 4), np.float32)
        assert isinstance(completion_extra_body(x)["prompt_embeds"], str)
        for bad in (x, pe_client.RawTensor.bfloat16(x)):
            try:
                pe_client.encode_embeds(bad, "torch")
            except pe_client.MissingDependencyError as exc:
                assert "pe-client[torch]" in str(exc), exc
            else:
                raise AssertionError("no error")
        try:
            pe_client.PEClient(embeds_format="torch").completions.create(model="m", prompt_embeds=x)
        except ImportError as exc:
            print("ok", type(exc).__name__)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok MissingDependencyError"
