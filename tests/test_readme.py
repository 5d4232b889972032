"""The README's quick start and .ci/run must stay in step (CI runs the README's test command)."""
import re

from tests.conftest import REPO


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2, "the quick start is exactly two commands"
    assert "python -m benchmarks run --suite tcga_brca" in block[0]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert block[1] in ci, f"{block[1]!r} not in .ci/run"
