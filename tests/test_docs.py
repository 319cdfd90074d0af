"""Docs that are generated from code stay in sync with it."""

import subprocess
import sys

from tests.server_process import REPO


def test_configuration_doc_is_current():
    result = subprocess.run([sys.executable, "scripts/gen_config_docs.py", "--check"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
