"""The README's test command is scripts/test.sh, .ci/run calls exactly it, and it explains missing data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_names_the_script_and_ci_runs_exactly_it():
    readme = (REPO / "README.md").read_text()
    m = re.search(r"# 2\. run the tests[^\n]*\n(?:#[^\n]*\n)*([^\n]+)\n", readme)
    assert m, "README lost its test command"
    command = m.group(1).strip()
    assert command == "bash scripts/test.sh"
    ci = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert ci[-1] == command


def test_script_stops_with_a_clear_message_when_data_is_missing(tmp_path):
    env = {**os.environ, "CROSSMAT_DATA_DIR": str(tmp_path / "nodata"), "CROSSMAT_CHROMIUM": "/bin/true",
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "test.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"CROSSMAT_DATA_DIR={tmp_path / 'nodata'} lacks matbench_v0.1" in proc.stderr
    assert "crossmat build matbench --source official" in proc.stderr
    assert "browser: /bin/true" in proc.stderr
