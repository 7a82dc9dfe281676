"""Give each concurrent inference job on one machine its own GPU(s), through lock files keyed by device.

Slurm assigns devices itself and sets CUDA_VISIBLE_DEVICES for each job. Snakemake's local executor only counts
GPUs (`--resources gpu=N`) and never says which device a job may use, so two jobs would both start on device 0.
Here each device has a lock file `<pool_dir>/gpu<id>.lock`; a job holds an exclusive `flock` on the files of the
devices it uses and sets CUDA_VISIBLE_DEVICES to them. The kernel drops the locks when the process ends, however
it ends, so a crashed job never keeps a device.

The pool is, first found: the `visible` argument, the SEQSHARD_GPUS environment variable (device ids as
CUDA_VISIBLE_DEVICES lists them, e.g. "0,1,3"), the CUDA_VISIBLE_DEVICES the job inherited, or the GPUs of
`nvidia-smi -L` by UUID. UUIDs name a device whatever CUDA_DEVICE_ORDER says, so the user's order (CUDA's default
puts the fastest device first, nvidia-smi counts by PCI bus) is left as it is; ids from the first three sources
mean what they mean under that order.

The pool directory is SEQSHARD_GPU_POOL, else one per user under the temp directory (one per allocation inside a
Slurm job, so that a local executor running inside one big allocation shares out just that allocation's
devices). Jobs of different users therefore do not see each other's locks by default; to share a machine's
GPUs between users, point SEQSHARD_GPU_POOL at one folder: seqshard creates it writable by everyone (sticky,
like /tmp) and its lock files readable and writable by everyone. The folder must be on a filesystem with
working `flock` (a local disk, /dev/shm; not Lustre mounted without its flock option).
"""

from __future__ import annotations

import errno
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
    """SEQSHARD_GPU_POOL, else one pool per user and machine (not per workflow: separate runs share it too)."""
    environ = os.environ if environ is None else environ
    if environ.get(POOL_DIR_VARIABLE):
        return Path(environ[POOL_DIR_VARIABLE])
    pool = Path(tempfile.gettempdir()) / f"seqshard-gpu-pool-{os.getuid()}"
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
    gpus = [line for line in listing.splitlines() if line.startswith("GPU ")]
    # By UUID: an index would mean nvidia-smi's PCI order here and CUDA_DEVICE_ORDER's order in the job.
    uuids = [re.search(r"\(UUID: (GPU-[^)\s]+)\)", line) for line in gpus]
    if all(uuids):
        return [match.group(1) for match in uuids]  # type: ignore[union-attr]
    log.warning("nvidia-smi -L gave no UUIDs; device ids follow its (PCI bus) order")
    return [str(i) for i in range(len(gpus))]


def scheduler_assigned_devices(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The devices in CUDA_VISIBLE_DEVICES as Slurm set them for this job, or None outside a Slurm job."""
    environ = os.environ if environ is None else environ
    if "SLURM_JOB_ID" in environ and "CUDA_VISIBLE_DEVICES" in environ:
        return split_devices(environ["CUDA_VISIBLE_DEVICES"])
    return None


def lock_path(pool_dir: Path, device: str) -> Path:
    # Device ids may be UUIDs (GPU-8f1c...) or MIG ids with slashes; keep file names plain.
    return pool_dir / f"gpu{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


# flock errors that mean "this filesystem cannot lock", not "someone else holds the lock".
_NO_FLOCK = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK}


def make_pool_dir(pool: Path, shared: bool) -> None:
    """Create the pool folder: private (0700) for a user's default pool, writable by all (1777) when shared.

    A default pool that exists but belongs to someone else is refused: its locks would not be this user's.
    """
    if not pool.is_dir():
        pool.mkdir(parents=True, exist_ok=True)
        try:
            # mkdir's mode is cut by the umask; chmod is not. Sticky: users cannot remove each other's lock files.
            pool.chmod(0o1777 if shared else 0o700)
        except PermissionError:
            pass  # another user made it between our mkdir and chmod; try_lock says so if it is unusable
    owner = pool.stat().st_uid
    if not shared and owner != os.getuid():
        raise RuntimeError(
            f"the GPU pool folder {pool} belongs to uid {owner}, not to this user ({os.getuid()}); set "
            f"{POOL_DIR_VARIABLE} to a folder of your own, or to one shared by every user of these GPUs"
        )


def try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on `path`, or None if another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        # A lock file made by another user: flock works on a read-only descriptor as well.
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, PermissionError):
            folder = path.parent.stat()
            raise RuntimeError(
                f"cannot create the GPU lock file {path}: the pool folder {path.parent} belongs to uid "
                f"{folder.st_uid} with mode {folder.st_mode & 0o7777:04o}, which this user (uid {os.getuid()}) "
                f"cannot write. Set {POOL_DIR_VARIABLE} to a folder you can write (one shared by every user of "
                f"these GPUs: seqshard creates it with mode 1777), or ask its owner to chmod 1777 {path.parent}"
            ) from None
    else:
        if os.fstat(fd).st_uid == os.getuid():
            os.fchmod(fd, 0o666)  # past the umask: another user of a shared pool may open it read-write
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as error:
        os.close(fd)
        if error.errno in _NO_FLOCK:
            raise RuntimeError(
                f"cannot lock {path}: flock failed with {errno.errorcode[error.errno]} ({error.strerror}), so the "
                f"filesystem of the GPU pool folder {path.parent} does not support flock (Lustre mounted without "
                f"-o flock, some network filesystems). Set {POOL_DIR_VARIABLE} to a folder on a local filesystem, "
                "e.g. /tmp or /dev/shm"
            ) from None
        raise
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
    # Shared unless it is this user's default pool: a folder named explicitly may be meant for several users.
    make_pool_dir(pool, shared=pool_dir is not None or bool(os.environ.get(POOL_DIR_VARIABLE)))
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
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    chosen = list(held)
    # CUDA_DEVICE_ORDER is the user's: ids are UUIDs (order-free) or ids the user gave under that order.
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
    if waited_since is not None:
        log.info("waited %.1f s for GPU(s)", time.monotonic() - waited_since)
    log.info("using GPU(s) %s from the pool in %s", os.environ["CUDA_VISIBLE_DEVICES"], pool)
    try:
        with ExitStack() as stack:
            for fd in held.values():
                stack.callback(os.close, fd)
            yield chosen
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous


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
