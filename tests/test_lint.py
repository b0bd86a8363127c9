"""ruff, as configured in pyproject.toml ([tool.ruff]), is clean on src/ and tests/: the test command runs the linter,
so `.ci/run` does too. Installed by the `test` extra (pinned there, so a new ruff release does not change what
passes)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean_on_src_and_tests():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert "No module named ruff" not in done.stderr, "ruff is missing: pip install -e '.[test]'"
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
