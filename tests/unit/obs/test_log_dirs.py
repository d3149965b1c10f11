"""Pruning old replica log folders: a pure choice over names, then a thin pass over a folder."""

from __future__ import annotations

import os
import subprocess

import pytest

from modelplex._config import LogOptions
from modelplex._obs.log_dirs import pid_alive, prune_sessions, session_name, sessions_to_prune

DEAD = 4194305  # above the kernel's PID_MAX_LIMIT: never a live process


def _session(day: int, pid: int = DEAD) -> str:
    return f"session_2026-01-{day:02d}_12-00-00_{pid}"


def _make(root, *names: str) -> None:
    for name in names:
        (root / name).mkdir()


def test_keeps_the_newest_runs_and_removes_the_older_ones_oldest_first(tmp_path):
    _make(tmp_path, *(_session(day) for day in (3, 1, 5, 2, 4)))
    removed = prune_sessions(str(tmp_path), keep=2, alive=lambda pid: False)
    assert removed == [str(tmp_path / _session(day)) for day in (1, 2, 3)]
    assert sorted(os.listdir(tmp_path)) == [_session(4), _session(5)]


def test_fewer_runs_than_kept_removes_nothing(tmp_path):
    _make(tmp_path, _session(1), _session(2))
    assert prune_sessions(str(tmp_path), keep=2, alive=lambda pid: False) == []
    assert len(os.listdir(tmp_path)) == 2


def test_never_removes_the_folder_of_a_live_run(tmp_path):
    _make(tmp_path, _session(1, pid=11), _session(2, pid=22), _session(3, pid=33))
    removed = prune_sessions(str(tmp_path), keep=1, alive={11}.__contains__)
    assert removed == [str(tmp_path / _session(2, pid=22))]
    assert sorted(os.listdir(tmp_path)) == [_session(1, pid=11), _session(3, pid=33)]


def test_touches_nothing_but_session_folders(tmp_path):
    outside = tmp_path / "outside"
    root = tmp_path / "logs"
    outside.mkdir()
    root.mkdir()
    _make(root, "notes", "session_old", "session_2026-01-01_12-00-00_x", "Session_" + _session(1)[8:])
    (root / _session(2)).write_text("a file, not a folder")
    (root / _session(3)).symlink_to(outside, target_is_directory=True)
    before = sorted(os.listdir(root))
    assert prune_sessions(str(root), keep=0, alive=lambda pid: False) == []
    assert sorted(os.listdir(root)) == before
    assert outside.is_dir()


def test_a_missing_root_is_nothing_to_prune(tmp_path):
    assert prune_sessions(str(tmp_path / "absent"), keep=1) == []


def test_the_choice_is_a_pure_function_of_the_names():
    names = [_session(2), "notes", _session(1), _session(3, pid=7)]
    assert sessions_to_prune(names, 1, alive=lambda pid: False) == [_session(1), _session(2)]
    assert sessions_to_prune(names, 1, alive=lambda pid: pid == DEAD) == []


def test_session_names_sort_by_their_time():
    older, newer = session_name(1_700_000_000, 99), session_name(1_700_000_001, 5)
    assert sessions_to_prune([newer, older], 1, alive=lambda pid: False) == [older]


def test_pid_alive():
    child = subprocess.Popen(["true"])
    child.wait()
    assert pid_alive(os.getpid())
    assert not pid_alive(child.pid)
    assert not pid_alive(DEAD)


def test_log_runs_are_read_from_the_environment_once_and_checked():
    assert LogOptions.from_env({}).keep_runs == 10
    assert LogOptions.from_env({"MODELPLEX_LOG_RUNS": " 3 "}).keep_runs == 3
    for bad in ("0", "-1", "ten", "1.5"):
        with pytest.raises(ValueError, match=f"MODELPLEX_LOG_RUNS .*{bad!r}"):
            LogOptions.from_env({"MODELPLEX_LOG_RUNS": bad})
    with pytest.raises(ValueError, match="keep_runs"):
        LogOptions(keep_runs=0)


def test_two_runs_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    from modelplex._obs import log_dirs as _log_dirs
    from modelplex._obs.log_dirs import new_session_dir

    monkeypatch.setattr(_log_dirs.time, "time", lambda: 1_800_000_000.0)
    first, second = new_session_dir(10, str(tmp_path)), new_session_dir(10, str(tmp_path))
    assert first != second and second.startswith(first)
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(first), os.path.basename(second)])
