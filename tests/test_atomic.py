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


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_staging_entries_removed_only_when_ours_and_dead(tmp_path):
    from megatron_vlm.utils.atomic import HOST, remove_stale, staging_owner

    dead = _dead_pid()
    mine = {f".out.tmp-{HOST}-{dead}-0123abcd": "dir", f".out.tmp-{HOST}-{dead}-4567abcd": "file"}
    kept = {f".out.tmp-{HOST}-{os.getpid()}-89abcdef": "dir",  # a live process (this one)
            f".out.tmp-otherhost-{dead}-0123abcd": "dir",  # another host: its pid says nothing here
            f".outer.tmp-{HOST}-{dead}-0123abcd": "dir",  # another output
            ".out.12345.tmp": "file",  # not named by this scheme (someone else's)
            "out": "dir"}
    for name, kind in {**mine, **kept}.items():
        (tmp_path / name).mkdir() if kind == "dir" else (tmp_path / name).write_text("x")
    assert staging_owner(f".out.tmp-{HOST}-{dead}-0123abcd") == ("out", "tmp", HOST, dead)
    assert sorted(p.name for p in remove_stale(tmp_path / "out")) == sorted(mine)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_a_killed_write_is_cleaned_by_the_next_write_of_the_same_file(tmp_path):
    from megatron_vlm.utils.atomic import HOST

    left = tmp_path / f".a.json.tmp-{HOST}-{_dead_pid()}-0123abcd"
    left.write_text('{"torn')
    write_json(tmp_path / "a.json", {"v": 1})
    assert os.listdir(tmp_path) == ["a.json"]


def test_versioned_dir_switches_one_pointer_and_drops_the_old_version(tmp_path):
    from megatron_vlm.utils.atomic import versioned_dir

    prefix = tmp_path / "data"
    with versioned_dir(prefix, None) as v1:
        (v1 / "x").write_text("1")
        write_json(tmp_path / "data.json", {"files_dir": v1.name})
    with pytest.raises(RuntimeError), versioned_dir(prefix, v1.name) as v2:
        (v2 / "x").write_text("2")
        raise RuntimeError("killed before the switch")
    assert sorted(os.listdir(tmp_path)) == sorted(["data.json", v1.name])  # the old version is live
    with versioned_dir(prefix, v1.name) as v3:
        (v3 / "x").write_text("3")
        write_json(tmp_path / "data.json", {"files_dir": v3.name})
    assert sorted(os.listdir(tmp_path)) == sorted(["data.json", v3.name])
    assert (tmp_path / v3.name / "x").read_text() == "3"
