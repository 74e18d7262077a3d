"""The README's tables are generated from figures/ JSON: check the generator on the committed data."""

import os

import pytest

from workbench.bench import report

FOLDER = os.path.join(os.path.dirname(__file__), "..", "figures", "h100")


@pytest.mark.skipif(not os.path.exists(os.path.join(FOLDER, "seed-speed.json")), reason="no H100 data")
def test_tables_render_from_the_committed_json_and_replace_only_their_blocks(tmp_path):
    tables = report.render(FOLDER)
    assert "| 4096 |" in tables["speed"] and "flash2" in tables["ladder"]
    assert "flash2_mma" in tables["ladder-float16"] and "flash2_mma" not in tables["ladder"]  # fp16 only
    assert "| 32768 | OOM | OOM | OOM |" in tables["memory"]  # the page's word, the naive rung, torch
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- report:speed -->\nold\n<!-- /report:speed -->\n"
                      "<!-- report:memory -->\n<!-- /report:memory -->\n"
                      "<!-- report:ladder -->\n<!-- /report:ladder -->\n"
                      "<!-- report:ladder-float16 -->\n<!-- /report:ladder-float16 -->\noutro\n")
    text = report.update_readme(str(readme), tables)
    assert "old" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert tables["speed"] in text


def test_missing_block_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="report:speed"):
        report.update_readme(str(readme), {"speed": "x"})


def test_readme_tables_are_current():
    """The committed README holds exactly what the generator makes from the committed JSON."""
    root = os.path.join(os.path.dirname(__file__), "..")
    if not os.path.exists(os.path.join(FOLDER, "seed-speed.json")):
        pytest.skip("no H100 data")
    text = open(os.path.join(root, "README.md")).read()
    for body in report.render(FOLDER).values():
        assert body in text, "README tables are stale: run python -m workbench.bench.report figures/h100"
