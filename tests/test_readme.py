"""README's promises about itself: the first section holds exactly the two commands it names."""

from __future__ import annotations

from tests.conftest import REPO


def test_two_commands_are_two() -> None:
    text = (REPO / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in section.splitlines() if line.startswith("    ") and line.strip()]
    assert len(commands) == 2, commands
    assert commands[0].strip().endswith("kimi-lab train experiment=quickstart")
    assert commands[1].strip().endswith("python -m pytest -q")
