"""sbatch scripts from the templates in ``launch/slurm/templates`` (Jinja2): a header of ``#SBATCH``
options, the job's environment, and the job's ``srun`` line."""

from __future__ import annotations

import datetime
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from launch.slurm.options import SchedulerOptions
from megatron_vlm import __version__

TEMPLATES = Path(__file__).resolve().parent / "templates"

# What every GPU training job wants unless the user says otherwise (--env wins).
GPU_ENV = {
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",  # Megatron-Core: TP/SP communication overlaps compute in issue order
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # a failed collective aborts the rank instead of hanging it
    "NCCL_DEBUG": "WARN",
}


class Shell(str):
    """A word that is already shell syntax (e.g. ``"${shard}"``): not quoted again."""


def shell_join(words: list[str]) -> str:
    return " ".join(w if isinstance(w, Shell) else shlex.quote(str(w)) for w in words)


@dataclass
class JobScript:
    """One sbatch script: its header options, environment and ``srun`` line, rendered by a template."""

    template: str  # train | array | merge
    path: Path
    title: str
    sbatch: list[str]
    srun: str
    notes: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    job_id: str = "${SLURM_JOB_ID}"
    extra: dict = field(default_factory=dict)  # the template's own values

    def render(self) -> str:
        environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                                         keep_trailing_newline=True, autoescape=False)
        context = dict(title=self.title, command_line=command_line(), version=__version__,
                       written=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                       notes=self.notes, sbatch=self.sbatch, setup=self.setup,
                       env=[(k, shlex.quote(v)) for k, v in self.env.items()], job_id=self.job_id, srun=self.srun,
                       script=shlex.quote(str(self.path)), **self.extra)
        return environment.get_template(f"{self.template}.sbatch.j2").render(context)

    def write(self) -> Path:
        """Write the script, and the folder of its ``--output`` logs (SLURM does not create it)."""
        from megatron_vlm.utils.atomic import atomic_write

        for line in self.sbatch:
            if line.startswith("--output="):
                Path(line.split("=", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path) as f:
            f.write(self.render())
        self.path.chmod(0o755)
        return self.path


def command_line() -> str:
    """The ``longvlm slurm ...`` command this process runs, as typed (else: the Python API)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("/longvlm", "longvlm/__main__.py")):
        return shell_join(["longvlm", *argv[1:]])
    return "longvlm.api.slurm (Python)"


def job_name(options: SchedulerOptions, kind: str, name: str) -> str:
    text = options.job_name or f"longvlm-{kind}-{name}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def scheduler_lines(options: SchedulerOptions, *, name: str, log: Path, cpus_per_task: int) -> list[str]:
    """The ``#SBATCH`` options every job has (task geometry and job-specific ones come first)."""
    lines = [f"--job-name={name}", f"--cpus-per-task={options.cpus_per_task or cpus_per_task}"]
    for key in ("partition", "account", "qos", "time", "mem"):
        value = getattr(options, key)
        if value is not None:
            lines.append(f"--{key}={value}")
    lines += [f"--chdir={os.getcwd()}", f"--output={log}", "--open-mode=append"]
    return lines


def environment(options: SchedulerOptions, defaults: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """(setup lines, exported variables) of a job: the venv, the user's --setup lines, defaults < --env."""
    setup = [f"source {shlex.quote(str(Path(options.venv).resolve() / 'bin' / 'activate'))}"] if options.venv else []
    setup += options.setup
    env = {"PYTHONUNBUFFERED": "1", **defaults}
    env.update(item.split("=", 1) for item in options.env)
    return setup, env


def srun_line(options: SchedulerOptions, srun_args: list[str], stage: list[str]) -> str:
    """``srun [geometry] [container] PYTHON -m longvlm STAGE...``."""
    words = ["srun", *srun_args]
    if options.container_image:
        words += [f"--container-image={options.container_image}", f"--container-workdir={os.getcwd()}"]
        if options.container_mounts:
            words.append(f"--container-mounts={options.container_mounts}")
    python = "python" if options.venv or options.container_image else sys.executable
    return shell_join([*words, python, "-m", "longvlm", *stage])
