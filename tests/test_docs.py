"""
Every Python block of the README and of the docs pages runs as pasted (in a fresh interpreter, in an empty folder),
with its training budgets cut so that the whole set takes seconds: snippets cannot drift from the code.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
# learn(total_timesteps=200_000) / learn(200_000) / total_timesteps = 200_000 -> a small budget
BUDGET = re.compile(r"(learn\((?:total_timesteps=)?|total_timesteps\s*=\s*)[\d_]+")
SMALL_BUDGET = 1_000


def python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in PAGES:
        for index, code in enumerate(BLOCK.findall(page.read_text())):
            blocks.append((f"{page.relative_to(ROOT)}#{index}", code))
    return blocks


def test_every_page_with_code_is_collected():
    names = {name.split("#")[0] for name, _ in python_blocks()}
    assert "README.md" in names
    assert len(names) >= 2, names


@pytest.mark.parametrize(("name", "code"), python_blocks(), ids=[name for name, _ in python_blocks()])
def test_snippet_runs_as_pasted(name: str, code: str, tmp_path):
    reduced = BUDGET.sub(lambda m: f"{m.group(1)}{SMALL_BUDGET}", code)
    assert reduced != code or "learn(" not in code, f"{name}: a learn() call whose budget the test cannot cut"
    result = subprocess.run(
        [sys.executable, "-c", reduced],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, f"{name} failed as pasted:\n{reduced}\n--- stderr ---\n{result.stderr[-3000:]}"
