"""Atomic writes: nothing torn on failure, usual file modes on success."""

from __future__ import annotations

import os
import stat

import pytest

from megatron_vlm.utils.atomic import DIR_MODE, FILE_MODE, atomic_dir, atomic_write, write_json


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write('{"v": 2, "torn')
        raise RuntimeError("killed midway")
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert os.listdir(tmp_path) == ["out.json"]


def test_outputs_get_umask_modes_not_private_temporary_ones(tmp_path):
    write_json(tmp_path / "a.json", [])
    with atomic_dir(tmp_path / "d") as d:
        (d / "x").write_text("x")
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == FILE_MODE
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == DIR_MODE
    assert FILE_MODE & 0o044  # readable by others under a usual umask (022)


def test_atomic_dir_refuses_to_overwrite_and_cleans_up_on_error(tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError), atomic_dir(tmp_path / "exists"):
        pass
    with pytest.raises(ValueError), atomic_dir(tmp_path / "new") as d:
        (d / "partial").write_text("x")
        raise ValueError("failed")
    assert sorted(os.listdir(tmp_path)) == ["exists"]
