"""The README's Python snippets run as written (in the simulator here): a snippet that drifts from
the API fails this test."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    # Snippets that need torch and a CUDA GPU say so in their first line.
    return [b for b in blocks if "needs a GPU" not in b.splitlines()[0]]


@pytest.mark.parametrize("index", range(len(snippets())))
def test_readme_snippet_runs(index, capsys):
    exec(compile(snippets()[index], f"README.md python block {index}", "exec"), {})
