"""The README stays short and runnable: its test command is the one CI runs; its, the changelog's and the docs' links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOC_PAGES = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= 150


def test_readme_test_command_is_what_ci_runs() -> None:
    ci_commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    ci_commands = [line for line in ci_commands if not line.startswith(("#", "echo"))]
    assert ci_commands == ["xvfb-run -a .venv/bin/python -m pytest"]
    readme = README.read_text()
    assert f"\n{ci_commands[0]}  " in readme  # a line of the README's code block starts with exactly this command
    assert "bash scripts/napari_demo.sh" in readme and "bash scripts/demo.sh" in readme


@pytest.mark.parametrize("page", [README, REPO / "CHANGELOG.md", *DOC_PAGES], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to missing files: {broken}"
