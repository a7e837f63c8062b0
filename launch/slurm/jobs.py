"""Talking to the scheduler: ``sbatch`` (submit), ``squeue`` then ``sacct`` (what became of a job), and
the record of the jobs submitted for a directory (``DIR/slurm/jobs.jsonl``, one object per job:
``job_id``, ``role``, ``script``, ``dependency``, ``submitted``)."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from launch.slurm.options import SlurmError

SLURM_DIR = "slurm"  # in a run directory / a stage's work directory: scripts, logs/, jobs.jsonl
JOBS = "jobs.jsonl"
LOGS = "logs"

_SQUEUE_FIELDS = ("JobID", "ArrayJobID", "ArrayTaskID", "Name", "State", "Reason", "TimeUsed", "NodeList",
                  "RestartCnt", "StartTime", "EndTime", "Exit_Code")
_SACCT_FIELDS = ("JobID", "JobName", "State", "Elapsed", "NodeList", "Start", "End", "ExitCode")


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SlurmError(f"{cmd[0]} not found: {what} needs a SLURM client (run on a login node)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{cmd[0]} did not answer within 120 s (is slurmctld up?)") from None


def sbatch(script: Path, *, dependency: str | None = None, kill_on_invalid_dep: bool = False) -> str:
    """Submit ``script``; its job id. ``kill_on_invalid_dep``: cancel the job if its dependency can never be met."""
    cmd = ["sbatch", "--parsable"]
    if dependency:
        cmd.append(f"--dependency={dependency}")
    if kill_on_invalid_dep:
        cmd.append("--kill-on-invalid-dep=yes")
    proc = _run([*cmd, str(script)], "--submit")
    if proc.returncode != 0:
        raise SlurmError(f"sbatch {script} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


@dataclass
class Submission:
    """What ``longvlm slurm train|pool|synth`` wrote and submitted."""

    directory: Path  # what ``longvlm slurm status`` takes
    scripts: list[Path]
    job_ids: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {p}" for p in self.scripts]
        if self.job_ids:
            lines.append(f"submitted job{'s' if len(self.job_ids) > 1 else ''} {', '.join(self.job_ids)}")
        lines += self.next_steps
        lines.append(f"status: longvlm slurm status {self.directory}")
        return "\n".join(lines)


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    role: str  # train | array | merge
    script: str
    dependency: str | None
    submitted: str


def jobs_path(directory: Path) -> Path:
    return Path(directory) / SLURM_DIR / JOBS


def read_jobs(directory: Path) -> list[JobRecord]:
    path = jobs_path(directory)
    if not path.is_file():
        return []
    return [JobRecord(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def record_job(directory: Path, job_id: str, role: str, script: Path, dependency: str | None) -> JobRecord:
    """Add a submitted job to ``DIR/slurm/jobs.jsonl`` (rewritten atomically)."""
    from megatron_vlm.utils.atomic import atomic_write

    record = JobRecord(job_id, role, str(script), dependency,
                       datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    lines = [json.dumps(asdict(r)) for r in [*read_jobs(directory), record]]
    path = jobs_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write("".join(line + "\n" for line in lines))
    return record


def submit(directory: Path, script: Path, role: str, *, dependency: str | None = None,
           kill_on_invalid_dep: bool = False) -> str:
    """``sbatch`` a script and record the job for ``longvlm slurm status DIR``; its job id."""
    job_id = sbatch(script, dependency=dependency, kill_on_invalid_dep=kill_on_invalid_dep)
    record_job(directory, job_id, role, script, dependency)
    return job_id


def logged_job_ids(directory: Path) -> list[str]:
    """Job ids in the names of ``DIR/slurm/logs/*-JOBID[_TASK].log`` (jobs submitted by hand too)."""
    ids = set()
    for log in (Path(directory) / SLURM_DIR / LOGS).glob("*.log"):
        match = re.search(r"-(\d+)(?:_\d+)?\.log$", log.name)
        if match:
            ids.add(match.group(1))
    return sorted(ids, key=int)


def job_states(job_ids: list[str]) -> list[dict]:
    """What the scheduler knows of these jobs (array jobs: one entry per task): ``squeue`` for jobs it
    still holds, ``sacct`` for older ones. Each entry: ``job``, ``name``, ``state``, ``reason``, ``elapsed``,
    ``nodes``, ``start``, ``end``, ``exit_code``, ``restarts`` (``None`` where not known), ``source``."""
    if not job_ids:
        return []
    out, seen = [], set()
    fmt = ",".join(f"{name}:512|" for name in _SQUEUE_FIELDS)
    proc = _run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(job_ids)}", f"--Format={fmt}"],
                "longvlm slurm status")
    if proc.returncode == 0:
        for line in proc.stdout.splitlines():
            values = [v.strip() for v in line.split("|")]
            if len(values) < len(_SQUEUE_FIELDS):
                continue
            row = dict(zip(_SQUEUE_FIELDS, values))
            array = row["ArrayTaskID"] not in ("N/A", "")
            seen.add(row["ArrayJobID"] if array else row["JobID"])
            out.append({"job": f"{row['ArrayJobID']}_{row['ArrayTaskID']}" if array else row["JobID"],
                        "name": row["Name"], "state": row["State"],
                        "reason": None if row["Reason"] in ("None", "") else row["Reason"],
                        "elapsed": row["TimeUsed"], "nodes": row["NodeList"] or None,
                        "start": _time(row["StartTime"]), "end": _time(row["EndTime"]),
                        "exit_code": _exit_code(row["Exit_Code"]) if row["State"] not in ("PENDING", "RUNNING") else None,
                        "restarts": int(row["RestartCnt"]) if row["RestartCnt"].isdigit() else None,
                        "source": "squeue"})
    missing = [j for j in job_ids if j not in seen]
    if missing:
        out += _sacct(missing)
    return out


def _exit_code(status: str) -> str | None:
    """squeue's raw wait status as sacct writes it, ``CODE:SIGNAL`` (17920 -> ``70:0``)."""
    return f"{int(status) >> 8}:{int(status) & 0x7F}" if status.isdigit() else None


def _time(value: str) -> str | None:
    return None if value in ("N/A", "Unknown", "None", "") else value


def _unknown(job_id: str, reason: str) -> dict:
    return {"job": job_id, "name": None, "state": "UNKNOWN", "reason": reason, "elapsed": None, "nodes": None,
            "start": None, "end": None, "exit_code": None, "restarts": None, "source": None}


def _sacct(job_ids: list[str]) -> list[dict]:
    proc = _run(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={','.join(job_ids)}",
                 f"--format={','.join(_SACCT_FIELDS)}"], "longvlm slurm status")
    if proc.returncode != 0:  # e.g. "Slurm accounting storage is disabled"
        why = (proc.stderr.strip() or proc.stdout.strip() or "failed").splitlines()[0]
        return [_unknown(j, f"not in the queue any more; sacct: {why}") for j in job_ids]
    out, found = [], set()
    for line in proc.stdout.splitlines():
        row = dict(zip(_SACCT_FIELDS, line.split("|")))
        found.add(row["JobID"].split("_")[0])
        out.append({"job": row["JobID"], "name": row["JobName"], "state": row["State"].split()[0],
                    "reason": None, "elapsed": row["Elapsed"], "nodes": row["NodeList"] or None,
                    "start": _time(row["Start"]), "end": _time(row["End"]), "exit_code": row["ExitCode"],
                    "restarts": None, "source": "sacct"})
    return out + [_unknown(j, "neither squeue nor sacct knows it") for j in job_ids if j not in found]


ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD")


def active_jobs(directory: Path) -> list[dict]:
    """The jobs recorded for ``directory`` that are still queued or running."""
    ids = [r.job_id for r in read_jobs(directory)]
    return [j for j in job_states(ids) if j["state"] in ACTIVE_STATES] if ids else []
