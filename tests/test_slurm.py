"""``longvlm slurm`` on a real scheduler: a one-node SLURM cluster (Debian's slurm-wlm and munge) that the
session starts (``slurm_cluster`` in conftest.py, ``tests/helpers/slurm_cluster.py``).

- The generated training script, submitted, trains the tiny model on 2 CPU ranks; ``status`` reports it.
- A job preempted with SIGUSR1 saves, exits 75, requeues itself, resumes and ends with the losses of
  the uninterrupted job, step for step (resume is exact on CPU).
- The local launcher runs the same recipe on 2 ranks to the same losses as the SLURM job.
- A pool job array of 2 shards plus its merge writes the pool of one unsharded run, and a synth array
  that depends on it (afterok) the tasks of one unsharded synth run.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from helpers.distributed import wait_for
from helpers.pools import pool_files
from helpers.training import records, train_overrides

from launch.slurm.options import SlurmError
from longvlm import api
from longvlm.cli import main as cli_main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STEPS = 10  # enough that a signal sent after step 1 lands before the last step, even on an idle machine
JOB_ENV = [f"PYTHONPATH={REPO}"]  # the jobs import this checkout


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in records(run_dir)]


def job_log(run_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((run_dir / "slurm" / "logs").glob("*.log")))


@pytest.fixture(scope="module")
def inputs(train_inputs, convert_to_megatron):
    """The tiny training inputs, started from a Megatron checkpoint (no conversion in every run)."""
    megatron = convert_to_megatron(train_inputs["hf"], 1, 1)
    # a loader worker per rank: SLURM signals every process of the step, and the workers must survive it
    extra = {"model.checkpoint": megatron, "data.num_workers": 1}
    return {**train_inputs, "overrides": train_overrides(train_inputs, STEPS, **extra)}


def submit_training(inputs: dict, run_dir: Path) -> str:
    job = api.slurm("train", recipe="tiny-cpu", overrides=inputs["overrides"], run_dir=str(run_dir), gpus_per_node=0,
                    tasks_per_node=2, cpus_per_task=1, env=JOB_ENV, submit=True)
    assert job.directory == run_dir and (run_dir / "config.yaml").is_file()
    return job.job_ids[0]


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster, inputs) -> Path:
    run_dir = inputs["tmp"] / "uninterrupted"
    job = submit_training(inputs, run_dir)
    assert slurm_cluster.wait(job) == ["COMPLETED"], job_log(run_dir)[-5000:]
    return run_dir


def test_training_job_trains_two_ranks_and_status_reports_it(uninterrupted, capsys):
    from megatron.core import dist_checkpointing

    recs = records(uninterrupted)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1)) and recs[-1]["loss"] < recs[0]["loss"]
    saved = dist_checkpointing.load_common_state_dict(str(uninterrupted / "checkpoints" / f"iter_{STEPS:07d}"))
    assert saved["train_state"]["layout"]["world_size"] == 2  # two srun tasks met as ranks 0 and 1
    assert "training exited with 0" in job_log(uninterrupted)
    report = api.slurm("status", directory=str(uninterrupted))
    assert report["run"]["last_step"]["step"] == STEPS and report["run"]["steps"] == STEPS
    assert report["run"]["checkpoint"]["iteration"] == STEPS
    assert [(j["role"], j["state"], j["exit_code"]) for j in report["jobs"]] == [("train", "COMPLETED", "0:0")]
    assert cli_main(["slurm", "status", str(uninterrupted)]) == 0
    out = capsys.readouterr().out
    assert f"step {STEPS}/{STEPS} (100%)" in out and f"checkpoint step {STEPS}" in out and "COMPLETED" in out


def test_preempted_job_requeues_resumes_and_matches_the_uninterrupted_one(slurm_cluster, inputs, uninterrupted):
    run_dir = inputs["tmp"] / "preempted"
    job = submit_training(inputs, run_dir)
    with pytest.raises(SlurmError, match=f"has job\\(s\\) {job} queued or running"):  # one job per run at a time
        submit_training(inputs, run_dir)
    wait_for(lambda: records(run_dir), "the first step of the job (both ranks in the training loop)", timeout=600)
    slurm_cluster.run("scancel", "--signal=USR1", job)  # what --signal=USR1@120 sends before the time limit
    assert slurm_cluster.wait(job) == ["COMPLETED"], job_log(run_dir)[-5000:]
    log = job_log(run_dir)
    found = re.search(r"SIGUSR1: saved step (\d+)", log)
    assert found, log[-5000:]
    step = int(found.group(1))
    assert 1 <= step < STEPS, "the signal must land before the last step"
    assert "training exited with 75" in log and "requeueing job" in log and f"job {job} on" in log
    assert "(restart 1)" in log and f"at step {step} ({4 * step} rows consumed)" in log
    assert losses(run_dir) == losses(uninterrupted)
    assert api.slurm("status", directory=str(run_dir))["jobs"][0]["restarts"] == 1


def test_local_launcher_runs_the_same_recipe_to_the_same_losses(inputs, uninterrupted, tmp_path):
    run_dir = tmp_path / "local"
    assert api.slurm("local", recipe="tiny-cpu", output=str(run_dir), nproc_per_node=2,
                     overrides=inputs["overrides"]) == 0
    assert losses(run_dir) == losses(uninterrupted)


def test_pool_and_synth_arrays_with_their_merges_equal_unsharded_runs(slurm_cluster, pdf_dir, tmp_path):
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    for name in ("float.pdf", "booktabs.pdf"):
        shutil.copy(pdf_dir / name, pdfs / name)
    inputs = [str(pdfs / "float.pdf"), str(pdf_dir / "float.pdf"), str(pdfs / "booktabs.pdf")]  # a duplicate across shards
    options = ["--dpi", "36", "--min-pages", "0", "--max-pages", "0"]
    pool = api.slurm("pool", num_shards=2, stage_args=[*inputs, "-o", str(tmp_path / "pool"), *options], env=JOB_ENV,
                     cpus_per_task=1, submit=True)
    synth = api.slurm("synth", num_shards=2, stage_args=[str(tmp_path / "pool"), "-o", str(tmp_path / "tasks.jsonl"),
                                                         "--seed", "3"],
                      dependency=f"afterok:{pool.job_ids[1]}", env=JOB_ENV, cpus_per_task=1, submit=True)
    logs = tmp_path / "tasks.jsonl.shards" / "slurm" / "logs"
    assert slurm_cluster.wait(synth.job_ids[1]) == ["COMPLETED"], "".join(p.read_text() for p in logs.glob("*"))
    assert [slurm_cluster.state(j) for j in (*pool.job_ids, synth.job_ids[0])] == [["COMPLETED"] * 2, ["COMPLETED"],
                                                                                     ["COMPLETED"] * 2]
    api.pool(inputs=inputs, output=str(tmp_path / "one"), dpi=36, min_pages=0, max_pages=0, progress=False)
    assert pool_files(tmp_path / "pool") == pool_files(tmp_path / "one")
    assert [len(list((tmp_path / "pool.shards" / f"shard-{k}").glob("pages.bin"))) for k in (0, 1)] == [1, 1]
    one = api.synth(pool=str(tmp_path / "one"), output=str(tmp_path / "one.jsonl"), seed=3, progress=False)
    assert one.accepted and (tmp_path / "tasks.jsonl").read_bytes() == one.output.read_bytes()
    assert (tmp_path / "tasks.rejected.jsonl").read_bytes() == one.rejected_path.read_bytes()
    report = api.slurm("status", directory=str(tmp_path / "pool"))
    assert report["stage"]["shards_complete"] == [0, 1] and report["stage"]["merged"]
    assert sorted(j["role"] for j in report["jobs"]) == ["array", "array", "merge"]
