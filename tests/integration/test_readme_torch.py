"""The README's torch example is real output: `examples/torch/run.sh` prints exactly
the block under "A checkpoint, pinned", on any machine (hashes and the manifest's
absolute path shortened by the script)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def readme_block() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## A checkpoint, pinned", 1)[1]
    return section.split("```text\n", 1)[1].split("```", 1)[0]


def test_the_readme_torch_example_is_what_the_script_prints(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}
    env["PYTHON"] = sys.executable
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / "torch" / "run.sh"), str(tmp_path / "demo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == readme_block()
