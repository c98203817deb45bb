"""The README's commands and the CI script agree."""

import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def _bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    blocks = _bash_blocks(_read("README.md"))
    test_commands = [b.strip() for b in blocks if "pytest" in b]
    assert len(test_commands) == 1, test_commands
    ci_lines = [line.strip() for line in _read(".ci/run").splitlines()]
    assert test_commands[0] in ci_lines


def test_readme_main_job_runs_the_quickstart():
    blocks = _bash_blocks(_read("README.md"))
    assert any("python -m zkd.quickstart" in b for b in blocks)
