"""A real one-node SLURM cluster on this machine for tests (Debian's ``slurm-wlm`` and ``munge``).

Everything lives in one folder: its own munge key and socket, a ``slurm.conf`` naming this host as the
only node (CPUs = ``nproc``), controller and node daemons on free ports, state, spool, logs and pid
files; ``SLURM_CONF`` points the clients at it. So it never touches a system cluster, and two test
sessions on one machine do not meet. Two settings differ from a production cluster so that tests are
quick: a requeued job may start again after 5 s (``cred_expire``; SLURM's default 120 s) and the
scheduler looks at the queue every 2 s.

    with SlurmCluster(folder) as cluster:
        subprocess.run(["sbatch", "job.sh"], env=cluster.env)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")


def missing_binaries() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._pid_files: list[Path] = []

    def _write_config(self) -> None:
        host = socket.gethostname().split(".")[0]
        r = self.root
        for sub in ("state", "spool", "log", "munge"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        (r / "munge").chmod(0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.conf.write_text(f"""\
ClusterName=longvlmtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r}/munge/munge.socket,cred_expire=5
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout: float = 60) -> SlurmCluster:
        self._write_config()
        r = self.root
        munge = r / "munge"
        subprocess.run(["munged", "--force", f"--socket={munge}/munge.socket", f"--key-file={munge}/munge.key",
                        f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
                        f"--seed-file={munge}/munged.seed"], check=True, capture_output=True)
        self._pid_files.append(munge / "munged.pid")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon], env=self.env, check=True, capture_output=True)
            self._pid_files.append(r / f"{daemon}.pid")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=self.env, capture_output=True,
                                   text=True).stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the test SLURM cluster in {r} did not come up (sinfo: {state!r}); see {r}/log")

    def stop(self) -> None:
        """End the daemons this cluster started, by their pid files (slurmd and slurmctld first)."""
        for pid_file in reversed(self._pid_files):
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
            except (FileNotFoundError, ValueError, ProcessLookupError):
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        self._pid_files.clear()

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for tests ----------------------------------------------------------------------

    def run(self, *args: str) -> str:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=True).stdout

    def state(self, job_id: str) -> list[str]:
        """The states of a job (one per array task) while the controller holds it."""
        out = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T"],
                             env=self.env, capture_output=True, text=True).stdout
        return out.split()

    def wait(self, job_id: str, timeout: float = 900) -> list[str]:
        """Wait until every task of the job has ended; their final states."""
        deadline = time.monotonic() + timeout
        ended = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                 "DEADLINE", "PREEMPTED"}
        while time.monotonic() < deadline:
            states = self.state(job_id)
            if states and all(s in ended for s in states):
                return states
            time.sleep(1)
        raise AssertionError(f"job {job_id} still {self.state(job_id)} after {timeout} s")
