"""The local GPU pool: concurrent jobs get different devices, wait when none is free, and never keep one."""

from __future__ import annotations

import os
import pwd
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from seqshard.runtime.gpus import (
    acquire_gpus,
    default_pool_dir,
    gpus_for_job,
    lock_path,
    scheduler_assigned_devices,
    visible_devices,
)

# A job in its own process: take N GPUs from the pool (an empty pool argument: the default pool), report
# CUDA_VISIBLE_DEVICES, hold them until stdin closes. A pool error is printed as its one-line message, exit 3.
HOLDER = """
import os, sys
from seqshard.runtime.gpus import acquire_gpus
try:
    with acquire_gpus(int(sys.argv[1]), sys.argv[2] or None, sys.argv[3].split(","), poll_seconds=0.05):
        print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
        sys.stdin.read()
except RuntimeError as error:
    print(error, flush=True)
    sys.exit(3)
"""
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Made by tests/setup-system (USERS there), never by the tests.
TEST_USERS = ("ssgpua", "ssgpub")


class Holder:
    """A job holding GPUs in its own process; as another Unix user (setpriv) when `user` is given."""

    def __init__(
        self, n: int, pool: Path | str, devices: str, user: pwd.struct_passwd | None = None,
        env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        command = [sys.executable, "-c", HOLDER, str(n), str(pool), devices]
        if user is not None:
            command = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *command]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd="/"
        )

    def devices(self, timeout: float = 10.0) -> str | None:
        """The CUDA_VISIBLE_DEVICES it got, or None if it is still waiting after `timeout` seconds."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        return self.process.stdout.readline().strip() if ready else None

    def release(self) -> None:
        self.process.stdin.close()
        assert self.process.wait(timeout=10) == 0

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def holders():
    started: list[Holder] = []
    yield lambda *args, **kwargs: started.append(Holder(*args, **kwargs)) or started[-1]
    for holder in started:
        if holder.process.poll() is None:
            holder.kill()


def test_two_jobs_get_different_devices_and_a_third_waits_for_a_release(tmp_path: Path, holders) -> None:
    first = holders(1, tmp_path, "0,1")
    assert first.devices() == "0"
    second = holders(1, tmp_path, "0,1")
    assert second.devices() == "1"
    third = holders(1, tmp_path, "0,1")
    assert third.devices(timeout=1.0) is None
    second.release()
    assert third.devices() == "1"
    first.release()
    third.release()


def test_a_crashed_job_frees_its_device(tmp_path: Path, holders) -> None:
    crashed = holders(1, tmp_path, "0")
    assert crashed.devices() == "0"
    waiting = holders(1, tmp_path, "0")
    assert waiting.devices(timeout=1.0) is None
    crashed.process.send_signal(signal.SIGKILL)
    assert waiting.devices() == "0"
    assert crashed.process.wait(timeout=10) == -signal.SIGKILL
    waiting.release()


def test_multi_gpu_jobs_take_all_their_devices_at_once(tmp_path: Path, holders) -> None:
    one = holders(1, tmp_path, "0,1,2")
    assert one.devices() == "0"
    two = holders(2, tmp_path, "0,1,2")
    assert two.devices() == "1,2"
    # Only device 0 would be free once `one` ends: a 2-GPU job must not sit on it while waiting for another.
    other = holders(2, tmp_path, "0,1,2")
    assert other.devices(timeout=1.0) is None
    one.release()
    single = holders(1, tmp_path, "0,1,2")
    assert single.devices() == "0"
    two.release()
    assert other.devices() == "1,2"
    single.release()
    other.release()


def test_device_ids_are_kept_as_listed_and_named_safely(tmp_path: Path, holders) -> None:
    job = holders(1, tmp_path, "GPU-8f1c/3,5")
    assert job.devices() == "GPU-8f1c/3"
    assert lock_path(tmp_path, "GPU-8f1c/3") == tmp_path / "gpuGPU-8f1c_3.lock"
    job.release()


def test_in_process_environment_is_set_and_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    with acquire_gpus(1, tmp_path) as chosen:
        assert chosen == ["4"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4"
        assert "CUDA_DEVICE_ORDER" not in os.environ  # the user's order (CUDA's default) is kept
        with acquire_gpus(1, tmp_path, visible=["4", "7"]) as nested:
            assert nested == ["7"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,7"
    assert "CUDA_DEVICE_ORDER" not in os.environ
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu4.lock", "gpu7.lock"]
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    with acquire_gpus(1, tmp_path):
        assert os.environ["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"


def test_asking_for_more_than_the_pool_fails_instead_of_waiting_for_ever(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"asks for 3 GPU\(s\) but this machine's pool has 2 \(0,1\)"):
        with acquire_gpus(3, tmp_path, visible=["0", "1"]):
            pass
    with pytest.raises(RuntimeError, match=r"pool has 0 \(none\)"):
        with acquire_gpus(1, tmp_path, visible=[]):
            pass


def test_pool_size_comes_from_override_then_cuda_then_nvidia_smi(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a1)'\necho '  MIG 1g.10gb Device 0: (UUID: MIG-c)'\n"
        "echo 'GPU 1: NVIDIA H100 (UUID: GPU-b2)'\n"
    )
    smi.chmod(0o755)
    path = f"{fake}:{os.environ['PATH']}"
    assert visible_devices({"SEQSHARD_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0", "PATH": path}) == ["2", "3"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "1, 0", "PATH": path}) == ["1", "0"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "", "PATH": path}) == []
    original = os.environ["PATH"]
    os.environ["PATH"] = path
    try:
        # By UUID, so that the job's CUDA_DEVICE_ORDER cannot make an id name another device.
        assert visible_devices({}) == ["GPU-a1", "GPU-b2"]
        smi.write_text("#!/bin/sh\necho 'GPU 0: Tesla K80'\necho 'GPU 1: Tesla K80'\n")
        assert visible_devices({}) == ["0", "1"]
    finally:
        os.environ["PATH"] = original


def test_slurm_assignment_is_respected_and_allocations_get_their_own_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert scheduler_assigned_devices({"CUDA_VISIBLE_DEVICES": "0"}) is None
    assert scheduler_assigned_devices({"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "1"}) == ["1"]
    assert default_pool_dir({"SEQSHARD_GPU_POOL": str(tmp_path)}) == tmp_path
    assert default_pool_dir({"SLURM_JOB_ID": "7"}).name == "slurm-7"
    assert default_pool_dir({}).name == f"seqshard-gpu-pool-{os.getuid()}"  # one per user

    monkeypatch.delenv("SEQSHARD_GPUS", raising=False)
    monkeypatch.setenv("SEQSHARD_GPU_POOL", str(tmp_path / "pool"))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    # A Slurm job that got the one GPU it asked for keeps it and touches no pool.
    with gpus_for_job(1) as devices:
        assert devices == ["1"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert not (tmp_path / "pool").exists()
    # A local executor inside one 2-GPU allocation shares that allocation's devices through the pool.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with gpus_for_job("1") as devices:
        assert devices == ["0"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert [p.name for p in (tmp_path / "pool").iterdir()] == ["gpu0.lock"]


def test_cpu_jobs_skip_the_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSHARD_GPU_POOL", str(tmp_path / "pool"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    for requested in (0, None, "0"):
        with gpus_for_job(requested) as devices:
            assert devices is None
    assert not (tmp_path / "pool").exists()


def test_waiting_job_starts_within_a_poll_of_the_release(tmp_path: Path, holders) -> None:
    holder = holders(1, tmp_path, "0")
    assert holder.devices() == "0"
    waiting = holders(1, tmp_path, "0")
    time.sleep(0.5)
    released = time.monotonic()
    holder.release()
    assert waiting.devices() == "0"
    assert time.monotonic() - released < 2.0
    waiting.release()


# --- two real Unix users, and a filesystem without flock --------------------------------------------------------


@pytest.fixture(scope="session")
def two_users() -> list[pwd.struct_passwd]:
    """The two Unix users tests/setup-system creates (TEST_USERS); their jobs run as them via setpriv, as root."""
    missing = [name for name in TEST_USERS if not user_exists(name)]
    reason = None
    if missing:
        reason = (
            f"two-user tests need the users {', '.join(missing)}: run tests/setup-system as root, which creates them"
        )
    elif os.geteuid() != 0 or shutil.which("setpriv") is None:
        reason = "two-user tests need root and setpriv to run jobs as another user"
    if reason is not None:
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return [pwd.getpwnam(name) for name in TEST_USERS]


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def shared_tmp() -> Path:
    """A temp folder every user may write, like /tmp (pytest's own folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="seqshard-gpus-"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def user_env(**values: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("SEQSHARD_GPU_POOL", "SEQSHARD_GPUS")}
    return {**env, **values}


def test_each_user_has_a_default_pool_of_their_own(two_users, shared_tmp: Path, holders) -> None:
    first, second = two_users
    env = user_env(TMPDIR=str(shared_tmp))
    a = holders(1, "", "0", user=first, env=env)
    assert a.devices() == "0"
    # The second user's job starts at once instead of failing on a lock file in the first user's folder.
    b = holders(1, "", "0", user=second, env=env)
    assert b.devices() == "0"
    for user in two_users:
        pool = shared_tmp / f"seqshard-gpu-pool-{user.pw_uid}"
        assert pool.stat().st_uid == user.pw_uid
        assert stat.S_IMODE(pool.stat().st_mode) == 0o700
        assert (pool / "gpu0.lock").stat().st_uid == user.pw_uid
    a.release()
    b.release()


def test_a_shared_pool_is_shared_by_two_users(two_users, shared_tmp: Path, holders) -> None:
    first, second = two_users
    pool = shared_tmp / "shared-pool"
    env = user_env(SEQSHARD_GPU_POOL=str(pool))
    a = holders(1, "", "0,1", user=first, env=env)
    assert a.devices() == "0"
    assert stat.S_IMODE(pool.stat().st_mode) == 0o1777 and pool.stat().st_uid == first.pw_uid
    b = holders(1, "", "0,1", user=second, env=env)
    assert b.devices() == "1"
    waiting = holders(1, "", "0,1", user=second, env=env)
    assert waiting.devices(timeout=1.0) is None
    a.release()
    assert waiting.devices() == "0"  # the second user now locks the first user's lock file
    for name, owner in (("gpu0.lock", first), ("gpu1.lock", second)):
        assert (pool / name).stat().st_uid == owner.pw_uid
        assert stat.S_IMODE((pool / name).stat().st_mode) == 0o666
    b.release()
    waiting.release()


def test_a_pool_folder_the_user_cannot_use_is_named(two_users, shared_tmp: Path, holders) -> None:
    first, second = two_users
    # A shared pool folder the first user made private (as seqshard itself used to: mode 0755).
    private = shared_tmp / "private-pool"
    private.mkdir(mode=0o755)
    os.chown(private, first.pw_uid, first.pw_gid)
    job = holders(1, "", "0", user=second, env=user_env(SEQSHARD_GPU_POOL=str(private)))
    message = job.devices()
    assert job.process.wait(timeout=10) == 3
    assert f"cannot create the GPU lock file {private}/gpu0.lock" in message
    assert f"uid {first.pw_uid} with mode 0755" in message and "Set SEQSHARD_GPU_POOL" in message
    # A default pool folder that someone else made first is refused, not silently shared.
    squatted = shared_tmp / f"seqshard-gpu-pool-{second.pw_uid}"
    squatted.mkdir(mode=0o1777)
    os.chown(squatted, first.pw_uid, first.pw_gid)
    job = holders(1, "", "0", user=second, env=user_env(TMPDIR=str(shared_tmp)))
    message = job.devices()
    assert job.process.wait(timeout=10) == 3
    assert f"{squatted} belongs to uid {first.pw_uid}" in message and "SEQSHARD_GPU_POOL" in message


# Run a job whose flock(2) fails with ENOSYS, as on Lustre mounted without -o flock: a seccomp filter set in the
# child process makes the kernel answer so (x86_64 and aarch64).
ENOSYS_FLOCK = """
import ctypes, errno, platform, struct, sys
flock_nr = {"x86_64": 73, "aarch64": 32}[platform.machine()]
audit_arch = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[platform.machine()]
LOAD, JUMP_IF_EQUAL, RETURN = 0x20, 0x15, 0x06
ALLOW, FAIL_WITH = 0x7FFF0000, 0x00050000
program = [  # (code, jump if true, jump if false, k): allow all but flock on this architecture
    (LOAD, 0, 0, 4), (JUMP_IF_EQUAL, 1, 0, audit_arch), (RETURN, 0, 0, ALLOW),
    (LOAD, 0, 0, 0), (JUMP_IF_EQUAL, 0, 1, flock_nr), (RETURN, 0, 0, FAIL_WITH | errno.ENOSYS), (RETURN, 0, 0, ALLOW),
]
code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *insn) for insn in program))
class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
fprog = SockFprog(len(program), ctypes.addressof(code))
assert libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0
from seqshard.runtime.gpus import acquire_gpus
try:
    with acquire_gpus(1, sys.argv[1], ["0"]):
        pass
except RuntimeError as error:
    print(error)
    sys.exit(3)
"""


def test_flock_enosys_says_to_move_the_pool(tmp_path: Path) -> None:
    import platform

    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip(f"the seccomp filter knows x86_64 and aarch64 only, not {platform.machine()}")
    done = subprocess.run([sys.executable, "-c", ENOSYS_FLOCK, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    message = done.stdout.strip()
    assert message.startswith(f"cannot lock {tmp_path}/gpu0.lock: flock failed with ENOSYS")
    assert "Set SEQSHARD_GPU_POOL to a folder on a local filesystem" in message
    assert "Traceback" not in done.stdout + done.stderr
