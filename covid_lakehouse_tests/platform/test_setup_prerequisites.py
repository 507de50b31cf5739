"""`make test` checks what it needs beyond Python before running anything, with one clear message."""

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _make(target: str, path: str) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("make") or "/usr/bin/make", "-s", "-C", str(REPO), target],
                          env={"PATH": path}, capture_output=True, text=True, timeout=60, check=False)


def test_missing_tools_are_listed_together_with_how_to_install_them(tmp_path):
    result = _make("prerequisites", str(tmp_path))  # an empty PATH: none of the tools
    assert result.returncode != 0
    [message] = result.stdout.strip().splitlines()
    assert "make test needs on PATH: chromium chromedriver kubectl" in message
    assert "apt-get install chromium chromium-driver" in message and "brew install" in message


def test_tools_present_pass_the_check(tmp_path):
    for tool in ("chromium", "chromedriver", "kubectl"):
        stub = tmp_path / tool
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    result = _make("prerequisites", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_test_runs_the_check_before_pytest():
    dry = subprocess.run([shutil.which("make") or "/usr/bin/make", "-n", "-C", str(REPO), "test"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert dry.index("make test needs on PATH") < dry.index("pytest")
