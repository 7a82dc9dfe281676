"""Give each concurrent inference job on one machine its own GPU(s), through lock files keyed by device.

Slurm assigns devices itself and sets CUDA_VISIBLE_DEVICES for each job. Snakemake's local executor only counts
GPUs (`--resources gpu=N`) and never says which device a job may use, so two jobs would both start on device 0.
Here each device has a lock file `<pool_dir>/gpu<id>.lock`; a job holds an exclusive `flock` on the files of the
devices it uses and sets CUDA_VISIBLE_DEVICES to them. The kernel drops the locks when the process ends, however
it ends, so a crashed job never keeps a device.

The pool is, first found: the `visible` argument, the SEQSHARD_GPUS environment variable (device ids as
CUDA_VISIBLE_DEVICES lists them, e.g. "0,1,3"), the CUDA_VISIBLE_DEVICES the job inherited, or one id per line
of `nvidia-smi -L`. The pool directory is SEQSHARD_GPU_POOL, else one per machine under the temp directory (one
per allocation inside a Slurm job, so that a local executor running inside one big allocation shares out just
that allocation's devices).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path

log = logging.getLogger(__name__)

POOL_DIR_VARIABLE = "SEQSHARD_GPU_POOL"
DEVICES_VARIABLE = "SEQSHARD_GPUS"


def default_pool_dir(environ: Mapping[str, str] | None = None) -> Path:
    """One pool per machine (not per workflow), so that separate Snakemake runs on one host share it too."""
    environ = os.environ if environ is None else environ
    if environ.get(POOL_DIR_VARIABLE):
        return Path(environ[POOL_DIR_VARIABLE])
    pool = Path(tempfile.gettempdir()) / "seqshard-gpu-pool"
    # Under Slurm with device cgroups every allocation numbers its GPUs from 0: keep their pools apart.
    return pool / f"slurm-{environ['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in environ else pool


def split_devices(value: str) -> list[str]:
    return [device.strip() for device in value.split(",") if device.strip()]


def visible_devices(environ: Mapping[str, str] | None = None) -> list[str]:
    """The machine's device ids the pool hands out (see the module docstring for the order of sources)."""
    environ = os.environ if environ is None else environ
    for variable in (DEVICES_VARIABLE, "CUDA_VISIBLE_DEVICES"):
        if variable in environ:
            return split_devices(environ[variable])
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return [str(i) for i, _ in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


def scheduler_assigned_devices(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The devices in CUDA_VISIBLE_DEVICES as Slurm set them for this job, or None outside a Slurm job."""
    environ = os.environ if environ is None else environ
    if "SLURM_JOB_ID" in environ and "CUDA_VISIBLE_DEVICES" in environ:
        return split_devices(environ["CUDA_VISIBLE_DEVICES"])
    return None


def lock_path(pool_dir: Path, device: str) -> Path:
    # Device ids may be UUIDs (GPU-8f1c...) or MIG ids with slashes; keep file names plain.
    return pool_dir / f"gpu{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


def try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on `path`, or None if another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        # A lock file made by another user: flock works on a read-only descriptor as well.
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def acquire_gpus(
    n: int,
    pool_dir: Path | str | None = None,
    visible: Sequence[str] | None = None,
    poll_seconds: float = 0.5,
) -> Iterator[list[str]]:
    """Hold `n` free devices of the pool and set CUDA_VISIBLE_DEVICES to them until the block ends.

    Waits while fewer than `n` are free. Devices are taken all at once or not at all, so two jobs that each
    want two GPUs cannot each end up holding one and waiting for ever.
    """
    devices = list(visible) if visible is not None else visible_devices()
    if n < 1:
        raise ValueError(f"asked for {n} GPUs; ask for at least 1 or skip the pool")
    if n > len(devices):
        raise RuntimeError(
            f"job asks for {n} GPU(s) but this machine's pool has {len(devices)} ({','.join(devices) or 'none'}); "
            f"set {DEVICES_VARIABLE} or CUDA_VISIBLE_DEVICES to the devices to share"
        )
    pool = Path(pool_dir) if pool_dir is not None else default_pool_dir()
    pool.mkdir(parents=True, exist_ok=True)
    waited_since = None
    while True:
        held: dict[str, int] = {}
        for device in devices:
            fd = try_lock(lock_path(pool, device))
            if fd is not None:
                held[device] = fd
                if len(held) == n:
                    break
        if len(held) == n:
            break
        for fd in held.values():
            os.close(fd)
        if waited_since is None:
            waited_since = time.monotonic()
            log.info("waiting for %d free GPU(s) of %s in %s", n, ",".join(devices), pool)
        time.sleep(poll_seconds)
    previous = {name: os.environ.get(name) for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    chosen = list(held)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
    # nvidia-smi numbers devices by PCI bus; CUDA's default order is fastest first. Make the ids mean the same.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if waited_since is not None:
        log.info("waited %.1f s for GPU(s)", time.monotonic() - waited_since)
    log.info("using GPU(s) %s from the pool in %s", os.environ["CUDA_VISIBLE_DEVICES"], pool)
    try:
        with ExitStack() as stack:
            for fd in held.values():
                stack.callback(os.close, fd)
            yield chosen
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def gpus_for_job(requested: int | str | None, pool_dir: Path | str | None = None) -> AbstractContextManager[object]:
    """What a rule script wraps its work in: nothing for CPU jobs or devices a scheduler assigned, else the pool."""
    count = int(requested or 0)
    if count == 0:
        return nullcontext()
    assigned = scheduler_assigned_devices()
    # A Slurm job given as many devices as it asked for owns them. More than that means a local executor runs
    # several jobs inside one allocation: they share its devices through the pool.
    if assigned is not None and len(assigned) <= count:
        log.info("using GPU(s) %s assigned by Slurm (CUDA_VISIBLE_DEVICES)", ",".join(assigned))
        return nullcontext(assigned)
    return acquire_gpus(count, pool_dir)
