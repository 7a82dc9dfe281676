"""A throwaway single-node Slurm 22.05 cluster (munged, slurmctld, slurmd) for the workflow's Slurm tests.

There is no init system on the test machines, so each daemon runs in the foreground as a child process that
`SlurmCluster.stop()` ends by its PID. Slurm reads its configuration from /etc/slurm only (the jobstep plugin
drops SLURM_CONF before its inner srun), so the files written there are backed up and restored on stop.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from daemons import stop_process

HERE = Path(__file__).resolve().parent
SLURM_ETC = Path("/etc/slurm")
# What tests/setup-system installs for this cluster (named in the message when a command is missing).
APT_PACKAGES = ["slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge"]
REQUIRED_COMMANDS = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo"]
# Character devices that stand in for GPUs: Slurm only needs a distinct file per device.
STAND_IN_DEVICES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random"]


class SlurmUnavailable(RuntimeError):
    """Slurm is not installed on this machine, or could not be started."""


def missing_commands() -> list[str]:
    return [name for name in REQUIRED_COMMANDS if shutil.which(name) is None]


def check_slurm_installed() -> None:
    """Raise SlurmUnavailable naming what is missing; tests/setup-system installs it (the tests install nothing)."""
    missing = missing_commands()
    if missing:
        raise SlurmUnavailable(
            f"Slurm is not installed ({', '.join(missing)} missing): run tests/setup-system as root, which installs "
            f"{' '.join(APT_PACKAGES)}"
        )


@contextmanager
def one_test_cluster_at_a_time(timeout: float = 900.0) -> Iterator[None]:
    """Hold the machine's test-cluster lock: two test sessions would fight over /etc/slurm and the ports."""
    with open(Path("/tmp") / "seqshard-slurm-test.lock", "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SlurmUnavailable(
                        f"another test session held the Slurm test cluster for {timeout:.0f} s"
                    ) from None
                time.sleep(1)
        yield


def cluster_is_up() -> bool:
    return (
        shutil.which("scontrol") is not None
        and subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout.count("UP") > 0
    )


@dataclass
class SlurmCluster:
    """One node `localhost` with `cpus` CPUs, `gpus` stand-in GPUs and partition `debug`."""

    state: Path
    cpus: int = 2
    gpus: int = 2
    real_memory_mb: int = 20000
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    backups: dict[Path, bytes | None] = field(default_factory=dict)
    outputs: list[IO[bytes]] = field(default_factory=list)

    def write_config(self) -> None:
        values = {
            "munge_socket": self.state / "munge" / "munge.socket",
            "state": self.state,
            "cpus": self.cpus,
            "gpus": self.gpus,
            "real_memory_mb": self.real_memory_mb,
            "gpu_lines": "\n".join(f"NodeName=localhost Name=gpu File={dev}" for dev in STAND_IN_DEVICES[: self.gpus]),
        }
        SLURM_ETC.mkdir(parents=True, exist_ok=True)
        for name in ("slurm.conf", "gres.conf"):
            target = SLURM_ETC / name
            self.backups[target] = target.read_bytes() if target.exists() else None
            target.write_text((HERE / f"{name}.in").read_text().format(**values))

    def restore_config(self) -> None:
        for target, content in self.backups.items():
            if content is None:
                target.unlink(missing_ok=True)
            else:
                target.write_bytes(content)
        self.backups.clear()

    def spawn(self, name: str, command: list[str]) -> None:
        self.outputs.append(open(self.state / f"{name}.out", "wb"))  # noqa: SIM115 - closed by stop()
        self.processes[name] = subprocess.Popen(
            command, stdout=self.outputs[-1], stderr=subprocess.STDOUT, start_new_session=True
        )

    def start(self, timeout: float = 30.0) -> None:
        for sub in ("munge", "ctld", "d"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        munge = self.state / "munge"
        munge.chmod(0o700)
        key = munge / "munge.key"
        subprocess.run(["mungekey", "-c", "-k", str(key)], check=True, capture_output=True)
        key.chmod(0o600)
        self.write_config()
        self.spawn("munged", ["munged", "-F", "--force", f"--key-file={key}", f"--socket={munge / 'munge.socket'}",
                              f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                              f"--seed-file={munge / 'munge.seed'}"])  # fmt: skip
        self.wait_for(lambda: (munge / "munge.socket").exists(), timeout, "munged socket")
        self.spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self.wait_for(cluster_is_up, timeout, "slurmctld to answer `scontrol ping`")
        self.spawn("slurmd", ["slurmd", "-D", "-N", "localhost"])
        self.wait_for(lambda: self.node_state() == "idle", timeout, "node localhost to be idle")

    def node_state(self) -> str:
        result = subprocess.run(["sinfo", "-h", "-N", "-n", "localhost", "-o", "%T"], capture_output=True, text=True)
        return result.stdout.strip()

    def wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited with {process.returncode} while waiting for {what}:\n"
                                           f"{self.logs()}")  # fmt: skip
            if ready():
                return
            time.sleep(0.2)
        raise SlurmUnavailable(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for path in sorted(self.state.glob("*.out")) + sorted(self.state.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """End each daemon this object started, by its PID, newest first; then put /etc/slurm back."""
        for name in reversed(list(self.processes)):
            stop_process(self.processes.pop(name))
        for output in self.outputs:
            output.close()
        self.outputs.clear()
        self.restore_config()


def scontrol_job(job_id: str) -> dict[str, str]:
    """`scontrol show job -d -o` as a dict of its KEY=VALUE fields (the first, where -d repeats a key)."""
    result = subprocess.run(["scontrol", "show", "job", "-d", "-o", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"scontrol show job {job_id}: {result.stderr.strip()}")
    fields: dict[str, str] = {}
    for token in result.stdout.split():
        if "=" in token:
            key, value = token.split("=", 1)
            fields.setdefault(key, value)
    return fields
