"""The README's two quick-start commands are what CI runs, verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_has_exactly_two_commands_and_ci_runs_them():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands), "each quick-start command must be one line"
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in commands:
        assert command in ci, f".ci/run does not run the README command: {command}"


def test_main_command_uses_shipped_files():
    setup = quick_start_commands()[0]
    for path in re.findall(r"=(Resources/\S+)", setup):
        assert (ROOT / path).is_file(), path
    default = (ROOT / "Resources" / "Models" / "DEFAULT").read_text().strip()
    assert (ROOT / "Resources" / "Models" / default / "bundle.json").is_file()
