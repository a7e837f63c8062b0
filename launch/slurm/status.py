"""``longvlm slurm status DIR``: the jobs of a run (or of a sharded stage) and where the work stands.

For a run directory: its jobs (``slurm/jobs.jsonl`` and the job ids in ``slurm/logs/``, looked up with
``squeue``, then ``sacct``), the latest checkpoint (``checkpoints/latest_checkpointed_iteration.txt``),
the last step of ``metrics.jsonl`` and the config. For ``longvlm slurm pool|synth``: the jobs, which
shards are complete, whether the merged output exists, and how to resubmit failed array tasks.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from launch.slurm.jobs import LOGS, SLURM_DIR, job_states, logged_job_ids, read_jobs
from launch.slurm.options import SlurmError, StatusConfig
from launch.slurm.stage_job import output_complete, read_stage_info, work_dir

FAILED_STATES = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                 "PREEMPTED")


def _mtime(path: Path) -> str:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime).astimezone().isoformat(timespec="seconds")


def find_directory(directory: str | Path) -> Path:
    """The run directory or stage work directory that ``directory`` names."""
    path = Path(directory).resolve()
    if (path / SLURM_DIR).is_dir() or (path / "config.yaml").is_file():
        return path
    if (work_dir(path) / SLURM_DIR).is_dir():
        return work_dir(path)
    raise SlurmError(f"{directory}: neither a run directory (config.yaml, slurm/) nor the output of longvlm slurm "
                     f"pool|synth ({work_dir(path)} does not exist)")


def _jobs(directory: Path) -> tuple[list[dict], str | None]:
    records = read_jobs(directory)
    roles = {r.job_id: r.role for r in records}
    ids = list(dict.fromkeys([r.job_id for r in records] + logged_job_ids(directory)))
    try:
        states = job_states(ids)
    except SlurmError as err:  # no SLURM client here: the run's own files still tell a lot
        return [{"job": j, "role": roles.get(j)} for j in ids], str(err)
    logs = directory / SLURM_DIR / LOGS
    states.sort(key=lambda j: [int(x) if x.isdigit() else -1 for x in j["job"].split("_")])
    for state in states:
        state["role"] = roles.get(state["job"].split("_")[0])
        found = sorted(logs.glob(f"*-{state['job']}.log"))
        state["log"] = str(found[-1]) if found else None
    return states, None


def planned_steps(config) -> int | None:
    """The run's optimizer steps, as training plans them (``None`` if its datasets cannot be read here)."""
    from megatron_vlm.formats.dataset import read_meta, row_length

    if config.train.train_steps is not None:
        return config.train.train_steps
    try:
        longest = max(row_length(read_meta(s.prefix)) for s in config.data.train)
    except Exception:  # noqa: BLE001 - status shows what it can
        return None
    return config.steps(config.seq_length(longest))


def run_report(run_dir: Path) -> dict:
    from megatron_vlm.formats.checkpoint import TRACKER_NAME, iteration_dir_name, latest_iteration
    from training.config import load_recipe
    from training.metrics import METRICS, read_metrics

    config = load_recipe(run_dir / "config.yaml")
    layout = config.parallel
    report: dict = {"config": {"model": config.model.checkpoint, "data": [s.prefix for s in config.data.train],
                               "layout": f"TP{layout.tp} PP{layout.pp} CP{layout.cp}{' SP' if layout.sp else ''}",
                               "global_batch_size": config.train.global_batch_size},
                    "steps": planned_steps(config), "checkpoint": None, "last_step": None, "last_valid": None}
    root = run_dir / "checkpoints"
    iteration = latest_iteration(root) if (root / TRACKER_NAME).is_file() else None
    if iteration is not None:
        path = root / iteration_dir_name(iteration)
        report["checkpoint"] = {"iteration": iteration, "path": str(path),
                                "saved": _mtime(path) if path.exists() else None}
    metrics = run_dir / METRICS
    if metrics.is_file():
        records = read_metrics(metrics)
        train = [r for r in records if r.get("split", "train") == "train"]
        valid = [r for r in records if r.get("split") == "valid"]
        if train:
            report["last_step"] = {k: train[-1].get(k) for k in ("step", "loss", "lr", "grad_norm", "tokens_per_s",
                                                                 "step_time", "mfu")}
            report["last_step"]["at"] = _mtime(metrics)
        if valid:
            report["last_valid"] = valid[-1]
    return report


def stage_report(work: Path, jobs: list[dict]) -> dict:
    info = read_stage_info(work) or {}
    shards = [Path(p) for p in info.get("shards", [])]
    done = [k for k, p in enumerate(shards) if output_complete(info["stage"], p)]
    report = {"stage": info.get("stage"), "output": info.get("output"), "num_shards": len(shards),
              "shards_complete": done,
              "merged": bool(info) and output_complete(info["stage"], Path(info["output"])), "resubmit": None}
    failed = sorted({int(j["job"].split("_")[1]) for j in jobs
                     if j.get("role") == "array" and "_" in j["job"] and j["job"].split("_")[1].isdigit()
                     and j.get("state") in FAILED_STATES and int(j["job"].split("_")[1]) not in done})
    if failed and not report["merged"]:
        slurm_dir = work / SLURM_DIR
        report["resubmit"] = (f"id=$(sbatch --parsable --array={','.join(map(str, failed))} {slurm_dir / 'array.sbatch'})"
                              f" && sbatch --dependency=afterok:$id --kill-on-invalid-dep=yes "
                              f"{slurm_dir / 'merge.sbatch'}")
    return report


def run_status(config: StatusConfig) -> dict:
    """``longvlm slurm status``: a dict (what ``--json`` prints)."""
    directory = find_directory(config.directory)
    jobs, problem = _jobs(directory)
    report = {"directory": str(directory), "jobs": jobs, "jobs_problem": problem}
    if (directory / "config.yaml").is_file():
        report["run"] = run_report(directory)
    else:
        report["stage"] = stage_report(directory, jobs)
    return report


def format_status(report: dict) -> str:
    lines = []
    if "run" in report:
        run = report["run"]
        c = run["config"]
        lines += [f"run        {report['directory']}",
                  f"config     {c['model']}; data {', '.join(c['data'])}; {c['layout']}; global batch {c['global_batch_size']}"]
        last = run["last_step"]
        if last:
            total = run["steps"]
            parts = [f"step {last['step']}" + (f"/{total} ({last['step'] / total:.0%})" if total else ""),
                     f"loss {last['loss']:.4f}", f"lr {last['lr']:.3g}"]
            if last.get("tokens_per_s"):
                parts.append(f"{last['tokens_per_s']:,.0f} tok/s")
            if last.get("step_time"):
                parts.append(f"{last['step_time']:.2f} s/step")
            if last.get("mfu") is not None:
                parts.append(f"MFU {last['mfu']:.1%}")
            lines.append(f"progress   {', '.join(parts)}; written {last['at']}")
        else:
            lines.append("progress   no step yet")
        if run["last_valid"]:
            lines.append(f"valid      step {run['last_valid']['step']}: loss {run['last_valid']['loss']:.4f}")
        ckpt = run["checkpoint"]
        lines.append(f"checkpoint step {ckpt['iteration']} ({ckpt['path']}, saved {ckpt['saved']})" if ckpt
                     else "checkpoint none yet")
    else:
        stage = report["stage"]
        done = stage["shards_complete"]
        lines += [f"{stage['stage']:<10} {report['directory']} -> {stage['output']}",
                  f"shards     {len(done)}/{stage['num_shards']} complete"
                  + (f" ({', '.join(map(str, done))})" if 0 < len(done) < stage["num_shards"] else ""),
                  f"merged     {'yes' if stage['merged'] else 'not yet'}"]
        if stage["resubmit"]:
            lines.append(f"resubmit   {stage['resubmit']}")
    lines.append("jobs" + (f"       ({report['jobs_problem']})" if report["jobs_problem"] else ""))
    header = ("JOB", "ROLE", "STATE", "ELAPSED", "RESTARTS", "NODES", "EXIT/REASON")
    rows = [header] + [(j["job"], j.get("role") or "-", j.get("state") or "?", j.get("elapsed") or "-",
                        "-" if j.get("restarts") is None else str(j["restarts"]), j.get("nodes") or "-",
                        j.get("exit_code") or j.get("reason") or "-") for j in report["jobs"]]
    if len(rows) == 1:
        lines.append("  none submitted (sbatch the scripts in slurm/, or rerun with --submit)")
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows if len(rows) > 1 else []:
        lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    logs = [j["log"] for j in report["jobs"] if j.get("log")]
    if logs:
        lines.append(f"latest log {logs[-1]}")
    return "\n".join(lines)


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2)
