"""What survives a kill or Ctrl-C at any point: real ``python -m longvlm`` processes, stopped at a
precise point by the ``LONGVLM_TEST_STOP_AT`` hook (megatron_vlm/utils/stop_points.py), then rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pymupdf
import pytest

from longvlm import api
from megatron_vlm.utils.stop_points import ENV as STOP_AT

REPO = Path(__file__).resolve().parents[1]
POOL_OPTS = ["--dpi", "36", "--min-pages", "0", "--max-pages", "0", "--workers", "1", "--chunk-docs", "1",
             "--no-progress"]


def longvlm(*args: str, stop_at: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m longvlm ARGS`` in its own process group (so that a Ctrl-C reaches only it)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop(STOP_AT, None)
    if stop_at:
        env[STOP_AT] = stop_at
    return subprocess.run([sys.executable, "-m", "longvlm", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, start_new_session=True)


def assert_one_line_stop(result: subprocess.CompletedProcess, command: str, kept: str) -> None:
    """Ctrl-C: exit 130, no traceback from the parent or a worker, one line saying what was kept."""
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"longvlm {command}: stopped by SIGINT; "), result.stderr
    assert kept in lines[0]


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def small_pdfs(tmp_path_factory) -> list[str]:
    """Four distinct 5-page PDFs (fast to render at 36 dpi)."""
    root = tmp_path_factory.mktemp("pdfs")
    paths = []
    for n in range(4):
        doc = pymupdf.open()
        for page in range(5):
            p = doc.new_page(width=300 + 20 * n, height=400)
            p.insert_text((20, 40), f"document {n} page {page + 1}\nsome text to lay out", fontsize=11)
        path = root / f"doc{n}.pdf"
        doc.save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def reference_pool(small_pdfs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "pool"
    api.pool(inputs=small_pdfs, output=str(out), dpi=36, min_pages=0, max_pages=0, progress=False)
    return out


# --- pool -----------------------------------------------------------------------------------------

def test_pool_parent_killed_mid_document_loses_nothing(small_pdfs, reference_pool, tmp_path):
    """kill -9 of the parent alone: the orphaned worker's broken pipe is not a document's fault."""
    out = tmp_path / "pool"
    killed = longvlm("pool", *small_pdfs, "-o", str(out), *POOL_OPTS, stop_at="pool.page#3")
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()
    rerun = longvlm("pool", *small_pdfs, "-o", str(out), *POOL_OPTS)
    assert rerun.returncode == 0, rerun.stderr
    assert files(out) == files(reference_pool)  # byte-identical: no document recorded as a rejection
    assert sorted(os.listdir(tmp_path)) == ["pool"]  # work folder and staging gone


def test_pool_killed_while_publishing_appears_whole_or_not_at_all(small_pdfs, reference_pool, tmp_path):
    out = tmp_path / "pool"
    killed = longvlm("pool", *small_pdfs, "-o", str(out), *POOL_OPTS, stop_at="pool.publish")
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()
    left = sorted(os.listdir(tmp_path))
    assert left[0] == ".pool.tmp-" + left[0].split(".tmp-")[1] and left[1:] == [".pool.work"]
    rerun = longvlm("pool", *small_pdfs, "-o", str(out), *POOL_OPTS)
    assert rerun.returncode == 0, rerun.stderr
    assert files(out) == files(reference_pool)
    assert sorted(os.listdir(tmp_path)) == ["pool"]  # the dead run's staging folder was removed


def test_pool_ctrl_c_stops_quietly_and_resumes(small_pdfs, reference_pool, tmp_path):
    out = tmp_path / "pool"
    stopped = longvlm("pool", *small_pdfs, "-o", str(out), *POOL_OPTS, stop_at="pool.page#8:INT")
    assert_one_line_stop(stopped, "pool", f"finished chunks are kept in {tmp_path / '.pool.work'}")
    assert (tmp_path / ".pool.work" / "chunks" / "chunk-000000").is_dir() and not out.exists()
    rerun = longvlm("pool", *small_pdfs, "-o", str(out), *POOL_OPTS)
    assert rerun.returncode == 0, rerun.stderr
    assert files(out) == files(reference_pool)


def test_pool_worker_killed_from_outside_is_not_the_documents_fault(small_pdfs, tmp_path):
    """SIGKILL of a worker (the OOM killer): its chunk is redone, never recorded as a rejection; a
    document on which workers keep getting killed stops the run, naming it."""
    out = tmp_path / "pool"
    result = longvlm("pool", *small_pdfs, "-o", str(out), *POOL_OPTS, stop_at="pool.worker.page#2")
    assert result.returncode == 2, result.stderr
    assert "killed by SIGKILL" in result.stderr and "3 times while on" in result.stderr
    assert small_pdfs[0] in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / ".pool.work" / "incidents.json").exists() and not out.exists()
