"""``longvlm slurm`` without a scheduler: what the scripts say (bash parses them), what is refused before
anything is written, and the local launcher's signal and failure handling with stand-in ranks.
The scripts' behaviour on a real scheduler is tested in test_slurm.py."""

from __future__ import annotations

import copy
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.training import train_overrides

from launch.slurm.options import SlurmError
from launch.slurm.stage_job import without_output
from longvlm import api
from longvlm.cli import main as cli_main
from training.config import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[1]


def bash_syntax_ok(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def sbatch_options(path: Path) -> list[str]:
    return [line.split(None, 1)[1] for line in path.read_text().splitlines() if line.startswith("#SBATCH ")]


def test_training_script_for_a_gpu_cluster(train_inputs, tmp_path):
    overrides = train_overrides(train_inputs, 100, **{"train.precision": "bf16", "train.global_batch_size": 16,
                                                      "data.num_workers": 3})
    job = api.slurm("train", recipe="tiny-cpu", overrides=overrides, run_dir=str(tmp_path / "run"), nodes=2,
                    gpus_per_node=8, partition="gpu", time="04:00:00", signal_seconds=300, container_image="nvcr.io#x",
                    container_mounts="/data:/data", env=["NCCL_DEBUG=INFO"], sbatch=["--exclusive"])
    script = job.scripts[0]
    assert script == tmp_path / "run" / "slurm" / "train.sbatch" and not job.job_ids
    bash_syntax_ok(script)
    options = sbatch_options(script)
    for option in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=4", "--partition=gpu",
                   "--time=04:00:00", "--signal=USR1@300", "--requeue", "--exclusive", "--open-mode=append",
                   f"--output={tmp_path / 'run' / 'slurm' / 'logs'}/%x-%j.log"):
        assert option in options
    text = script.read_text()
    assert "export CUDA_DEVICE_MAX_CONNECTIONS=1" in text and "export NCCL_DEBUG=INFO" in text
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    assert shlex.split(srun) == ["srun", "--ntasks-per-node=8", "--cpus-per-task=4", "--kill-on-bad-exit=0", "--wait=300",
                            "--container-image=nvcr.io#x", f"--container-workdir={os.getcwd()}",
                            "--container-mounts=/data:/data", "python", "-m", "longvlm", "train",
                            str(tmp_path / "run" / "config.yaml"), "-o", str(tmp_path / "run")]
    assert 'scontrol requeue "${SLURM_JOB_ID}"' in text
    # what the job trains is the checked recipe, written now
    assert load_recipe(tmp_path / "run" / "config.yaml") == load_recipe(REPO / "recipes" / "tiny-cpu.yaml", overrides)
    assert (tmp_path / "run" / "slurm" / "logs").is_dir()  # SLURM does not create the log folder


def test_a_chain_does_not_requeue_itself(train_inputs, tmp_path, capsys):
    args = ["slurm", "train", "tiny-cpu", "--run-dir", str(tmp_path / "run"), "--gpus-per-node", "0",
            "--tasks-per-node", "2", "--chain", "3", *train_overrides(train_inputs, 5)]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "--dependency=afternotok:$id --kill-on-invalid-dep=yes" in out
    script = tmp_path / "run" / "slurm" / "train.sbatch"
    bash_syntax_ok(script)
    assert "scontrol requeue" not in script.read_text() and "--gpus-per-node" not in script.read_text()
    assert "export OMP_NUM_THREADS=1" in script.read_text()


BAD_TRAIN_JOBS = [  # (options, overrides, message)
    ({"gpus_per_node": 0, "tasks_per_node": 2}, {"parallel.tp": 4}, "world size 2 is not a multiple of tp*pp*cp"),
    ({"gpus_per_node": 0}, {"train.precision": "bf16"}, "train.precision=bf16 needs a GPU"),
    ({"nodes": 3, "gpus_per_node": 8}, {}, "not a multiple of micro_batch_size x data-parallel size = 1 x 24"),
    ({}, {"checkpoint.exit_signals": "[SIGTERM]"}, "lacks SIGUSR1"),
    ({"venv": "/v", "container_image": "img"}, {}, "--venv and --container-image are exclusive"),
    ({"gpus_per_node": 8, "tasks_per_node": 4}, {}, "training runs one rank per GPU"),
    ({"env": ["NOEQUALS"]}, {}, "expected KEY=VALUE"),
]


@pytest.mark.parametrize("options, bad, message", BAD_TRAIN_JOBS, ids=[m[:28] for _, _, m in BAD_TRAIN_JOBS])
def test_bad_training_jobs_are_refused_before_anything_is_written(train_inputs, tmp_path, options, bad, message):
    with pytest.raises((SlurmError, RecipeError), match=message.replace("*", r"\*").replace("(", r"\(")):
        api.slurm("train", recipe="tiny-cpu", overrides=train_overrides(train_inputs, 5, **bad),
                  run_dir=str(tmp_path / "run"), **options)
    assert not (tmp_path / "run").exists()


def _expected_refusal(impl: str, attention: str, precision: str, cp: int, comm: str | None) -> str | None:
    """What training must refuse for a GPU machine (the tiny model: 4 heads, 2 KV groups), or None."""
    if precision == "fp8" and impl != "te":
        return "train.precision=fp8 needs model.transformer_impl=te"
    if cp > 1 and attention == "torch" and comm in ("p2p", "a2a"):
        return f"parallel.cp_comm_type={comm} is Transformer Engine's"
    if cp > 1 and attention == "te" and comm == "a2a":
        return "2 KV heads per TP rank do not divide by cp=4"
    return None


COMBINATIONS = [(impl, attention, precision, cp, comm) for impl in ("local", "te") for attention in ("torch", "te")
                for precision in ("bf16", "fp8") for cp, comms in ((1, [None]), (4, [None, "p2p", "a2a", "all_gather"]))
                for comm in comms]


def test_every_layer_combination_runs_or_is_refused_for_the_gpu_machine(train_inputs, tmp_path):
    """Every combination of linears, core attention, precision and CP communication is either accepted for the
    GPU machine or refused naming the key and what works (the checks `longvlm train` and `longvlm slurm train`
    run); two of them end to end through `longvlm slurm train` on this machine (no GPU, no Transformer
    Engine), which checks the recipe for the 8-GPU nodes it will run on and writes nothing when it refuses."""
    from megatron_vlm.models.qwen25vl.arch import Qwen25VLArch

    arch = Qwen25VLArch.from_hf(train_inputs["hf"])
    base = load_recipe(REPO / "recipes" / "tiny-cpu.yaml", train_overrides(train_inputs, 5))
    for impl, attention, precision, cp, comm in COMBINATIONS:
        config = copy.deepcopy(base)
        config.model.transformer_impl, config.model.attention_backend = impl, attention
        config.train.precision = precision
        config.parallel = type(config.parallel)(cp=cp, cp_comm_type=comm)
        problems = config.backend_problems(arch)
        refusal = _expected_refusal(impl, attention, precision, cp, comm)
        case = (impl, attention, precision, cp, comm)
        if refusal is None:
            assert problems == [], case
        else:
            assert any(refusal in p for p in problems), (case, problems)
            assert all(" use " in p or " set " in p for p in problems), problems  # each says what works
    for overrides, refusal in (({"model.transformer_impl": "te", "model.attention_backend": "te", "parallel.cp": 4,
                                 "train.precision": "fp8"}, None),
                                ({"parallel.cp": 4, "parallel.cp_comm_type": "p2p"}, "is Transformer Engine's")):
        run_dir = tmp_path / f"run{refusal is None}"
        call = dict(recipe="tiny-cpu", run_dir=str(run_dir), gpus_per_node=8,
                    overrides=train_overrides(train_inputs, 5, **overrides, **{"train.global_batch_size": 8}))
        if refusal is None:
            api.slurm("train", **call)
            assert load_recipe(run_dir / "config.yaml").model.transformer_impl == "te"
        else:
            with pytest.raises(RecipeError, match=refusal):
                api.slurm("train", **call)
            assert not run_dir.exists()


def test_stage_scripts_shard_the_command_line_and_merge(tmp_path, capsys):
    pool = tmp_path / "pool"
    job = api.slurm("pool", num_shards=4, max_parallel=2, stage_args=["pdfs.txt", "-o", str(pool), "--workers", "3"])
    array, merge = job.scripts
    assert job.directory == tmp_path / "pool.shards" and not job.job_ids
    for script in job.scripts:
        bash_syntax_ok(script)
    assert "--array=0-3%2" in sbatch_options(array) and "--cpus-per-task=3" in sbatch_options(array)
    srun = next(line for line in array.read_text().splitlines() if line.startswith("srun "))
    assert srun.endswith(f"pool pdfs.txt --workers 3 -o {tmp_path}/pool.shards/shard-\"${{shard}}\" "
                         "--shard \"${shard}\" --num-shards 4 --no-progress")
    merge_text = merge.read_text()
    assert f"shards+=({tmp_path}/pool.shards/shard-\"${{k}}\")" in merge_text and "k < 4" in merge_text
    assert f"pool --merge \"${{shards[@]}}\" -o {pool} --no-progress" in merge_text
    synth = api.slurm("synth", num_shards=2, stage_args=[str(pool), "-o", str(tmp_path / "t.jsonl"), "--seed", "3"])
    merge_text = synth.scripts[1].read_text()
    assert f"synth {pool} --merge \"${{shards[@]}}\" -o {tmp_path}/t.jsonl --no-progress" in merge_text
    assert "shard-\"${k}\".jsonl" in merge_text
    # refused before anything is written
    assert cli_main(["slurm", "pool", "--num-shards", "2", "--", "x.pdf", "-o", str(tmp_path / "p2"),
                     "--shard", "1", "--num-shards", "2"]) == 2
    assert "leave --shard, --num-shards and --merge out" in capsys.readouterr().err
    assert cli_main(["slurm", "synth", "--num-shards", "2", "--", str(pool), "-o", "t.jsonl", "--tasks", "qa"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert not (tmp_path / "p2.shards").exists()


def test_stage_status_names_the_failed_array_tasks_and_how_to_resubmit_them(tmp_path):
    from launch.slurm.status import format_status, stage_report

    job = api.slurm("pool", num_shards=3, stage_args=["pdfs.txt", "-o", str(tmp_path / "pool")])
    (job.directory / "shard-0").mkdir()
    (job.directory / "shard-0" / "pool.json").write_text("{}")  # a complete shard (written last)
    jobs = [{"job": "7_0", "role": "array", "state": "COMPLETED"}, {"job": "7_1", "role": "array", "state": "TIMEOUT"},
            {"job": "7_2", "role": "array", "state": "FAILED"}, {"job": "8", "role": "merge", "state": "CANCELLED"}]
    report = stage_report(job.directory, jobs)
    assert report["shards_complete"] == [0] and not report["merged"]
    array, merge = job.scripts
    assert report["resubmit"] == (f"id=$(sbatch --parsable --array=1,2 {array}) && "
                                  f"sbatch --dependency=afterok:$id --kill-on-invalid-dep=yes {merge}")
    text = format_status({"directory": str(job.directory), "stage": report, "jobs": jobs, "jobs_problem": None})
    assert "shards     1/3 complete (0)" in text and "merged     not yet" in text and "--array=1,2" in text


def test_without_output_drops_every_spelling_of_the_output_option():
    assert without_output(["a", "-o", "x", "--workers", "2", "--output=y", "-oz", "--output", "w", "b"]) == \
        ["a", "--workers", "2", "b"]


# -- the local launcher, with stand-in ranks --------------------------------------------------------
RANK = """
import os, signal, sys, time
rank = os.environ["RANK"]
signal.signal(signal.SIGTERM, lambda s, f: (os.write(1, f"rank {rank} saved\\n".encode()), sys.exit(75)))
# one write per line: under PYTHONUNBUFFERED print() writes the text and its newline apart, and two
# ranks on one pipe would interleave them
os.write(1, f"rank {rank} of {os.environ['WORLD_SIZE']} at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}\\n".encode())
if rank == os.environ.get("FAIL_RANK"):
    sys.exit(3)
time.sleep(120)
"""


def launcher(tmp_path: Path, **env) -> subprocess.Popen:
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    code = (f"import sys; from launch.slurm.local import launch_ranks; "
            f"sys.exit(launch_ranks([sys.executable, {str(script)!r}], 2, step_wait=2))")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env})


def test_local_launcher_passes_sigterm_on_and_exits_75_when_the_ranks_saved(tmp_path):
    proc = launcher(tmp_path)
    lines = [proc.stdout.readline() for _ in range(2)]
    assert sorted(line.split(" at ")[0] for line in lines) == ["rank 0 of 2", "rank 1 of 2"]
    assert len({line.split(" at ")[1] for line in lines}) == 1  # one rendezvous address
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75 and "rank 0 saved" in out and "rank 1 saved" in out


def test_local_launcher_ends_the_other_ranks_when_one_fails(tmp_path):
    start = time.monotonic()
    proc = launcher(tmp_path, FAIL_RANK="1")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3  # the failed rank's code; rank 0 was asked to stop after step_wait (2 s)
    assert "rank 0 saved" in out and time.monotonic() - start < 30
