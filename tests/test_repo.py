"""The newcomer path: the README's test command is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    quick = [b for b in blocks if "pytest" in b]
    assert quick, "the README's quick start has no test command"
    ci = (ROOT / ".ci" / "run").read_text()
    assert quick[0].strip() in ci.splitlines()


def test_bundled_mnist_keeps_its_attribution():
    text = (ROOT / "rayfl" / "data" / "mnist" / "README.md").read_text()
    assert "CC BY-SA 3.0" in text and "LeCun" in text
