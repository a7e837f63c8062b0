"""What survives a kill or Ctrl-C at any point: real ``python -m longvlm`` processes, stopped at a
precise point by the ``LONGVLM_TEST_STOP_AT`` hook (megatron_vlm/utils/stop_points.py), then rerun;
and damaged or odd inputs that must give one clear error. The process tests start the CLI several
times each (10-60 s on a 2-core machine) and are marked slow."""

from __future__ import annotations

import contextlib
import json
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


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def longvlm(*args: str, stop_at: str | None = None, timeout: float = 300,
            orphans_exit: bool = False) -> subprocess.CompletedProcess:
    """``python -m longvlm ARGS`` in its own process group (so that a Ctrl-C reaches only it). Output
    goes to files, not pipes, and what is left of the group afterwards is killed: a ``kill -9`` leaves
    orphans (megatron-core's multiprocessing manager), unless ``orphans_exit``: then they are waited
    for (pool workers must exit by themselves once their parent is gone)."""
    import tempfile
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop(STOP_AT, None)
    if stop_at:
        env[STOP_AT] = stop_at
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "longvlm", *args], cwd=REPO, env=env, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
            deadline = time.monotonic() + 60
            while orphans_exit and group_alive(proc.pid):
                assert time.monotonic() < deadline, "orphaned workers did not exit by themselves"
                time.sleep(0.1)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


def assert_one_line_stop(result: subprocess.CompletedProcess, command: str, kept: str) -> None:
    """Ctrl-C: exit 130, no traceback from the parent or a worker, one line saying what was kept."""
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, result.stderr
    assert "Exception in thread" not in result.stderr, result.stderr  # a daemon thread cut off at exit
    assert "" not in result.stderr.splitlines(), result.stderr  # no empty line before the message (not a TTY)
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("longvlm ")] == lines[-1:], result.stderr
    assert lines[-1].startswith(f"longvlm {command}: stopped by SIGINT; ") and kept in lines[-1], result.stderr


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def small_pdfs(tmp_path_factory) -> list[str]:
    """Four distinct 30-page PDFs (fast to render at 36 dpi, long enough that a kill at a document's
    third page finds the worker still on that document)."""
    root = tmp_path_factory.mktemp("pdfs")
    paths = []
    for n in range(4):
        doc = pymupdf.open()
        for page in range(30):
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

@pytest.mark.slow
def test_pool_parent_killed_mid_document_loses_nothing(small_pdfs, reference_pool, tmp_path):
    """kill -9 of the parent alone: the orphaned worker's broken pipe is not a document's fault."""
    out = tmp_path / "pool"
    killed = longvlm("pool", *small_pdfs, "-o", str(out), *POOL_OPTS, stop_at="pool.page#3", orphans_exit=True)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()
    rerun = longvlm("pool", *small_pdfs, "-o", str(out), *POOL_OPTS)
    assert rerun.returncode == 0, rerun.stderr
    assert files(out) == files(reference_pool)  # byte-identical: no document recorded as a rejection
    assert sorted(os.listdir(tmp_path)) == ["pool"]  # work folder and staging gone


@pytest.mark.slow
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


@pytest.mark.slow
def test_pool_ctrl_c_stops_quietly_and_resumes(small_pdfs, reference_pool, tmp_path):
    out = tmp_path / "pool"
    stopped = longvlm("pool", *small_pdfs, "-o", str(out), *POOL_OPTS, stop_at="pool.page#40:INT")
    assert_one_line_stop(stopped, "pool", f"finished chunks are kept in {tmp_path / '.pool.work'}")
    assert (tmp_path / ".pool.work" / "chunks" / "chunk-000000").is_dir() and not out.exists()
    rerun = longvlm("pool", *small_pdfs, "-o", str(out), *POOL_OPTS)
    assert rerun.returncode == 0, rerun.stderr
    assert files(out) == files(reference_pool)


@pytest.mark.slow
def test_pool_worker_killed_from_outside_is_not_the_documents_fault(small_pdfs, tmp_path):
    """SIGKILL of a worker (the OOM killer): its chunk is redone, never recorded as a rejection; a
    document on which workers keep getting killed stops the run, naming it."""
    out = tmp_path / "pool"
    result = longvlm("pool", *small_pdfs, "-o", str(out), *POOL_OPTS, stop_at="pool.worker.page#2")
    assert result.returncode == 2, result.stderr
    assert "killed by SIGKILL" in result.stderr and "3 times while on" in result.stderr
    assert small_pdfs[0] in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / ".pool.work" / "incidents.json").exists() and not out.exists()


# --- build and stats --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def build_inputs(reference_pool, qwen_tokenizer_dir, tmp_path_factory) -> dict:
    tasks = tmp_path_factory.mktemp("tasks") / "tasks.jsonl"
    api.synth(pool=str(reference_pool), output=str(tasks), per_doc=2, progress=False,
              tasks="extract-single,ocr-needle")
    return {"tasks": str(tasks), "pool": str(reference_pool), "tokenizer": str(qwen_tokenizer_dir)}


def build_args(inputs: dict, prefix: Path, *extra: str) -> list[str]:
    return ["build", inputs["tasks"], "--pool", inputs["pool"], "--tokenizer", inputs["tokenizer"], "-o", str(prefix),
            "--mixture", "extract-single=0.5,ocr-needle=0.5", "--seq-length", "2048", "--token-budget", "8000",
            "--no-progress", *extra]


def dataset_tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built_twice(build_inputs, tmp_path_factory) -> dict:
    """Two complete builds of one prefix (seeds 1 and 2), each kept as a copy of its folder (built by
    processes that have exited, as a user's earlier builds are)."""
    import shutil

    root = tmp_path_factory.mktemp("built")
    copies = {}
    for seed in (1, 2):
        out = root / f"seed{seed}"
        done = longvlm(*build_args(build_inputs, out / "data", "--seed", str(seed)))
        assert done.returncode == 0, done.stderr
        copies[seed] = root / f"copy{seed}"
        shutil.copytree(out, copies[seed])
    return {"root": root, "copies": copies}


@pytest.mark.slow
@pytest.mark.parametrize("point", ["build.commit", "build.committed"])
def test_build_killed_while_committing_keeps_a_whole_dataset(build_inputs, built_twice, tmp_path, point):
    """Killed just before or just after its one atomic step, a rebuild leaves the old dataset or the
    new one, whole and valid, never a mix; the next build removes the dead run's folders."""
    import shutil

    from preprocess.dataset.stats import dataset_stats

    out = tmp_path / "out"
    shutil.copytree(built_twice["copies"][1], out)  # an earlier complete dataset at the prefix
    killed = longvlm(*build_args(build_inputs, out / "data", "--seed", "2"), stop_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert killed.stderr.count("plan: ") == 1
    live = json.loads((out / "data.json").read_text())["files_dir"]
    assert len(list(out.glob(".data.v-*"))) == 2  # the live version and the dead run's other one
    expected = built_twice["copies"][1 if point == "build.commit" else 2]
    assert dataset_stats(out / "data")["total_tokens"] == dataset_stats(expected / "data")["total_tokens"]
    same = {k: v for k, v in dataset_tree(out).items() if k.startswith(live) or k == "data.json"}
    renamed = {k.replace(json.loads((expected / "data.json").read_text())["files_dir"], live): v
               for k, v in dataset_tree(expected).items() if k != "data.json"}
    assert {k: v for k, v in same.items() if k != "data.json"} == renamed
    from longvlm.cli import main

    assert main(build_args(build_inputs, out / "data", "--seed", "2")) == 0
    assert len(list(out.glob(".data.v-*"))) == 1 and sorted(p.name for p in out.iterdir() if p.name[0] != ".") \
        == ["data.json"]


@pytest.mark.slow
def test_build_ctrl_c_stops_quietly_and_keeps_the_old_dataset(build_inputs, built_twice, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(built_twice["copies"][1], out)
    before = dataset_tree(out)
    stopped = longvlm(*build_args(build_inputs, out / "data", "--seed", "2"), stop_at="build.commit:INT")
    assert_one_line_stop(stopped, "build", f"the dataset at {out / 'data'} (if any) is unchanged")
    assert dataset_tree(out) == before  # the interrupted build removed its own version folder


@pytest.mark.parametrize("name", ["data_tokens.bin", "data_targets.bin", "data_images.idx", "data_samples.bin"])
def test_stats_and_loader_name_a_truncated_file(train_inputs, tmp_path, capsys, name):
    import shutil

    from longvlm.cli import main
    from megatron_vlm.data.dataset import BuiltDataset
    from megatron_vlm.formats.dataset import DatasetFormatError

    out = tmp_path / "out"  # a copy of the training tests' dataset (its pages copied in: no pool needed)
    out.mkdir()
    shutil.copy(train_inputs["data"].with_suffix(".json"), out / "data.json")
    (files,) = train_inputs["tmp"].glob(".data.v-*")
    shutil.copytree(files, out / files.name)
    (path,) = out.glob(f".data.v-*/{name}")
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 3)
    assert main(["stats", str(out / "data")]) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and "truncated" in err and "Traceback" not in err
    with pytest.raises(DatasetFormatError, match=f"{path}"):
        BuiltDataset(out / "data")


def test_runaway_budget_is_refused_before_writing(build_inputs, tmp_path, capsys):
    from longvlm.cli import main

    prefix = tmp_path / "out" / "data"
    assert main(build_args(build_inputs, prefix)[:-3] + ["--no-progress"]) == 2  # the default 5e9 tokens
    err = capsys.readouterr().err
    assert "needs more than --max-repeats 4 uses of each sample" in err and "unique tokens for" in err
    assert "Lower --token-budget to at most" in err and "plan: " not in err
    assert not prefix.parent.exists() or not list(prefix.parent.iterdir())
    assert main(build_args(build_inputs, prefix, "--token-budget", "40000", "--max-repeats", "100")) == 0
    err = capsys.readouterr().err
    assert "plan: " in err and "GB on disk" in err and "repeat factor x" in err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_token_budget_is_a_clear_error(build_inputs, tmp_path, capsys, value):
    from longvlm.cli import main

    assert main(build_args(build_inputs, tmp_path / "d", f"--token-budget={value}")) == 2
    err = capsys.readouterr().err
    assert "--token-budget must be a finite number" in err and "Traceback" not in err


def test_every_sample_too_long_names_the_limit_not_the_mixture(build_inputs, tmp_path, capsys):
    from longvlm.cli import main

    assert main(build_args(build_inputs, tmp_path / "d", "--seq-length", "100")) == 2
    err = capsys.readouterr().err
    assert "every sample is longer than --seq-length 100 (the shortest has" in err and "--mixture" not in err


def test_text_only_chat_template_is_refused(build_inputs, tmp_path, capsys):
    import shutil

    from longvlm.cli import main

    tok = tmp_path / "qwen3_like"
    shutil.copytree(build_inputs["tokenizer"], tok)
    config = json.loads((tok / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                               "{% endfor %}")  # like Qwen3's: content is text
    (tok / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in ("chat_template.jinja", "chat_template.json"):
        (tok / extra).unlink(missing_ok=True)
    assert main(build_args(dict(build_inputs, tokenizer=str(tok)), tmp_path / "d")) == 2
    err = capsys.readouterr().err
    assert "chat template cannot render images" in err and "vision-language model's own tokenizer" in err


# --- synth ------------------------------------------------------------------------------------------

SYNTH_OPTS = ["--tasks", "extract-single,ocr-full,ocr-needle", "--per-doc", "2", "--no-progress"]


@pytest.mark.slow
def test_synth_killed_leaves_temporaries_that_the_rerun_removes(reference_pool, tmp_path):
    out = tmp_path / "tasks.jsonl"
    killed = longvlm("synth", str(reference_pool), "-o", str(out), *SYNTH_OPTS, stop_at="synth.instance#5")
    assert killed.returncode == -signal.SIGKILL
    left = sorted(os.listdir(tmp_path))
    assert len(left) == 2 and all(".tmp-" in name for name in left)  # the outputs' staging files
    assert not out.exists()
    rerun = longvlm("synth", str(reference_pool), "-o", str(out), *SYNTH_OPTS)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(os.listdir(tmp_path)) == ["tasks.jsonl", "tasks.rejected.jsonl", "tasks.summary.json"]
    fresh = tmp_path / "fresh" / "tasks.jsonl"
    api.synth(pool=str(reference_pool), output=str(fresh), tasks="extract-single,ocr-full,ocr-needle", per_doc=2,
              progress=False)
    assert out.read_bytes() == fresh.read_bytes()


@pytest.mark.slow
def test_synth_ctrl_c_stops_quietly(reference_pool, tmp_path):
    out = tmp_path / "tasks.jsonl"
    stopped = longvlm("synth", str(reference_pool), "-o", str(out), *SYNTH_OPTS, stop_at="synth.instance#3:INT")
    assert_one_line_stop(stopped, "synth", f"{out} is unchanged")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["layout.bin", "pages.bin", "pages.idx"])
def test_truncated_pool_store_is_named_when_the_pool_is_opened(reference_pool, tmp_path, capsys, name):
    import shutil

    from longvlm.cli import main

    pool = tmp_path / "pool"
    shutil.copytree(reference_pool, pool)
    with open(pool / name, "r+b") as f:
        f.truncate((pool / name).stat().st_size - 100)
    assert main(["synth", str(pool), "-o", str(tmp_path / "t.jsonl"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{pool / name}:" in err and "truncated" in err and "Traceback" not in err


# --- convert ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_convert_killed_before_publishing_leaves_no_output_and_the_rerun_cleans_up(tiny_hf_checkpoint, tmp_path):
    args = ["convert", "hf-to-megatron", "--hf", str(tiny_hf_checkpoint), "--out", str(tmp_path / "meg")]
    killed = longvlm(*args, stop_at="convert.publish")
    assert killed.returncode == -signal.SIGKILL
    (staging,) = os.listdir(tmp_path)  # the whole checkpoint, under the dead run's staging name
    assert staging.startswith(".meg.tmp-") and (tmp_path / staging / "latest_checkpointed_iteration.txt").exists()
    rerun = longvlm(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert os.listdir(tmp_path) == ["meg"]


# --- demo -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_ctrl_c_stops_quietly(small_pdfs, tmp_path):
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    for path in small_pdfs[:2]:
        (pdfs / Path(path).name).write_bytes(Path(path).read_bytes())
    stopped = longvlm("demo", "-o", str(tmp_path / "demo"), "--pdfs", str(pdfs), stop_at="pool.page#5:INT")
    assert_one_line_stop(stopped, "demo", f"the stages finished so far are in {tmp_path / 'demo'}/")
    assert sorted(os.listdir(tmp_path / "demo")) == [".longvlm-demo", ".pool.work"]  # no half-written pool
