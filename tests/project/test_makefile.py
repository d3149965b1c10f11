"""The Makefile installs per target: `make demo` only what the demo needs, nothing twice.

Checked with `make -n` (print, do not run) against a venv folder holding only stamp files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _plan(venv, target: str) -> list[str]:
    out = subprocess.run(
        ["make", "-n", "-C", ROOT, target, f"VENV={venv}"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    return [line for line in out.splitlines() if "pip install" in line]


def _stamps(venv, *names: str) -> None:
    venv.mkdir(exist_ok=True)
    for name in names:
        (venv / name).touch()


def test_demo_installs_the_package_and_the_examples_extra_only(tmp_path):
    installs = _plan(tmp_path / "venv", "demo")
    assert any(line.endswith(" -e .") for line in installs), installs
    extras = {e for line in installs for e in re.findall(r"\[([^\]]*)\]", line)}
    assert extras == {"examples"}, installs


def test_demo_after_test_installs_nothing(tmp_path):
    venv = tmp_path / "venv"
    _stamps(venv, ".package", ".extra-test", ".extra-examples", ".extra-ray")
    assert _plan(venv, "demo") == []


def test_test_after_demo_adds_only_the_missing_extras(tmp_path):
    venv = tmp_path / "venv"
    _stamps(venv, ".package", ".extra-examples")
    installs = _plan(venv, "test")
    assert [line.split()[-1] for line in installs] == ["'modelplex[test]'", "'modelplex[ray]'"]


def test_bench_installs_the_bench_extra(tmp_path):
    venv = tmp_path / "venv"
    _stamps(venv, ".package", ".extra-test", ".extra-examples", ".extra-ray")
    assert [line.split()[-1] for line in _plan(venv, "bench")] == ["'modelplex[bench]'"]
