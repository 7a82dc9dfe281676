"""Which device and precision an inference job runs in, why, and why a job that was given a GPU cannot use it.

Three rules, so that a run never changes hardware or precision behind the user's back:

- **A job given a GPU runs on a GPU or fails.** `resolve_device` takes the job's GPU request (`gpus`, the
  workflow's `gpu` resource; `--device cuda` on the command line): with a request, `device: auto` means CUDA,
  and a process that cannot use CUDA stops with the reasons found (`cuda_unavailable_reasons`: a CPU-only torch,
  CUDA_VISIBLE_DEVICES hiding every device, no /dev/nvidia* files as in an apptainer container started without
  `--nv`, a driver older than the torch build's CUDA needs). Without a request the workflow runs on the CPU even
  where a GPU is visible, since the GPU pool gave that job no device. So every shard of a run resolves alike.
- **`dtype: auto` follows the GPU's compute capability** (`auto_dtype`), read through `compute_capability`, the
  one place the hardware is asked: bf16 from 8.0 (A100, L4, H100: bf16 tensor cores, fp32's exponent range);
  fp16 on 7.x (V100, T4: tensor cores for fp16 only), guarded against overflow by the inference loop, which
  reruns a batch with a non-finite output in fp32 and counts it; fp32 below 7.0 (no tensor cores) and on the CPU.
- **The shards of one run agree** (`check_run_precision`): each job writes its figures file when it starts, with
  its device type, dtype and a key of the settings that shape the numbers, and first reads its siblings' (the
  other figures files in the same folder). A sibling with the same key but another device type or dtype stops
  the job at once, instead of the merge failing hours later on the provenance of the finished shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# The oldest Linux driver that runs a CUDA major version's builds (NVIDIA's minor-version compatibility table,
# docs.nvidia.com/deploy/cuda-compatibility): a torch built for CUDA 13.0 needs 580, one for 12.x needs 525.
MIN_DRIVER_FOR_CUDA = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}

# Where Linux exposes the loaded NVIDIA kernel module's version (also inside containers: /proc is the host's).
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
# CUDA_VISIBLE_DEVICES values that hide every device (Slurm writes NoDevFiles when a job got none).
_HIDING_VALUES = {"", "-1", "none", "nodevfiles", "void"}


def compute_capability(device: str) -> tuple[int, int] | None:
    """(major, minor) compute capability of a CUDA device, None for the CPU: the one place the hardware is read."""
    if not device.startswith("cuda"):
        return None
    return torch.cuda.get_device_capability(device)


def device_name(device: str) -> str | None:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else None


def auto_dtype(capability: tuple[int, int] | None) -> tuple[str, str]:
    """The dtype `auto` picks for a device of `capability` (None: the CPU), and why."""
    if capability is None:
        return "fp32", "CPU: fp32"
    label = f"compute capability {capability[0]}.{capability[1]}"
    if capability >= (8, 0):
        return "bf16", f"{label} >= 8.0: bf16 tensor cores, fp32's exponent range"
    if capability >= (7, 0):
        return "fp16", f"{label} < 8.0 has no bf16 tensor cores: fp16, batches with inf/NaN output rerun in fp32"
    return "fp32", f"{label} < 7.0 has no tensor cores: fp32"


def driver_version(version_file: Path = DRIVER_VERSION_FILE) -> str | None:
    """The NVIDIA kernel driver's version (e.g. '535.104.05'), from /proc or NVML; None when neither answers."""
    try:
        match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", version_file.read_text())
    except OSError:
        match = None
    if match:
        return match.group(1)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no library, no driver, no device: all mean "unknown"
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def required_driver(cuda_version: str | None) -> str | None:
    """The oldest driver that runs a torch built for `cuda_version` ('12.8'), None if unknown or CPU-only."""
    if not cuda_version:
        return None
    return MIN_DRIVER_FOR_CUDA.get(_version_tuple(cuda_version)[0])


def cuda_unavailable_reasons(
    environ: Mapping[str, str] | None = None,
    *,
    cuda_build: str | None = torch.version.cuda,
    dev: Path = Path("/dev"),
    version_file: Path = DRIVER_VERSION_FILE,
) -> list[str]:
    """Why torch sees no CUDA device here, one line per cause found (defaults: this process and machine).

    `cuda_build` is the CUDA version torch was built for (default `torch.version.cuda`; None: a CPU-only build).
    """
    environ = os.environ if environ is None else environ
    reasons = []
    if cuda_build is None:
        reasons.append(
            f"this torch ({torch.__version__}) is a CPU-only build: install a CUDA build (e.g. pip install "
            "torch --index-url https://download.pytorch.org/whl/cu128) or use an image built with --torch-cuda cu128"
        )
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip().lower() in _HIDING_VALUES:
        reasons.append(
            f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU from this process (the scheduler or the GPU pool "
            "gave it none)"
        )
    device_files = sorted(path.name for path in dev.glob("nvidia*"))
    if not device_files:
        reasons.append(
            f"no NVIDIA device files in {dev} (nvidiactl, nvidia0, ...): no driver is loaded, or this is a "
            'container started without GPUs (apptainer needs --nv: snakemake --apptainer-args "--nv"; docker '
            "and podman need --gpus all or --device nvidia.com/gpu=all)"
        )
    driver = driver_version(version_file) if device_files else None
    needed = required_driver(cuda_build)
    if driver and needed and _version_tuple(driver) < _version_tuple(needed):
        reasons.append(
            f"the NVIDIA driver {driver} is too old for this torch's CUDA {cuda_build} build, which needs driver "
            f">= {needed}: use a torch (or image) built for an older CUDA (cu128 needs >= "
            f"{MIN_DRIVER_FOR_CUDA[12]}) or update the driver"
        )
    return reasons


def _cuda_available() -> tuple[bool, list[str]]:
    """torch.cuda.is_available(), plus what torch warned while finding out (it explains driver problems)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    return available, [" ".join(str(warning.message).split()) for warning in caught]


def cuda_unavailable_message(what: str) -> str:
    """`what` (e.g. "job was given 1 GPU") followed by every reason found why CUDA cannot be used."""
    _, warned = _cuda_available()
    reasons = cuda_unavailable_reasons() + [f"torch says: {text}" for text in warned]
    if not reasons:
        reasons = ["torch.cuda.is_available() is False for a reason not found here; run nvidia-smi on this node"]
    return f"{what}, but torch sees no CUDA device: " + "; ".join(reasons)


def resolve_device(device: str, gpus: int | None = None) -> str:
    """The device to run on: `device` ('auto', 'cpu', 'cuda', 'cuda:N') given the job's GPU request.

    `gpus` is the number of GPUs the job was given (the workflow passes its `gpu` resource, 0 when none), or None
    when nobody said (the command line). With a request, `auto` means CUDA and no usable CUDA is an error that
    says why; with `gpus=0`, `auto` is the CPU even if a GPU is visible (it belongs to other jobs); with None,
    `auto` takes CUDA when torch sees it. An explicit `cuda` is an error without CUDA, whatever the request.
    """
    if device != "auto" and device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")
    wants_gpu = device.startswith("cuda") or (device == "auto" and bool(gpus))
    if device == "auto" and not gpus:
        if gpus is None and _cuda_available()[0]:
            return "cuda"
        return "cpu"
    if device == "cpu":
        if gpus:
            log.warning("the job was given %d GPU(s) but device is 'cpu': running on the CPU as configured", gpus)
        return "cpu"
    if wants_gpu and not _cuda_available()[0]:
        asked = f"job was given {gpus} GPU(s)" if gpus else f"device {device!r} was asked for"
        raise RuntimeError(cuda_unavailable_message(asked))
    return "cuda" if device == "auto" else device


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` by the device's compute capability (see `auto_dtype`); fp32, bf16 and fp16 as given."""
    if dtype == "auto":
        return auto_dtype(compute_capability(device))[0]
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, {', '.join(DTYPES)}")
    return dtype


@dataclass(frozen=True)
class Precision:
    """What a job computes on and in, and why: recorded in its figures and its Parquet provenance."""

    device: str  # "cpu", "cuda", "cuda:1"
    dtype: str  # "fp32", "bf16", "fp16"
    reason: str  # why this dtype
    capability: str | None = None  # "8.0"; None on the CPU
    device_name: str | None = None

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    def figures(self) -> dict[str, object]:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "dtype_reason": self.reason,
            "compute_capability": self.capability,
            "device_name": self.device_name,
        }


def resolve_precision(device: str, dtype: str, gpus: int | None = None) -> Precision:
    """Device (see `resolve_device`) and dtype (see `resolve_dtype`) of a job, with the reason for the dtype."""
    device = resolve_device(device, gpus)
    capability = compute_capability(device)
    chosen, reason = auto_dtype(capability)
    if dtype != "auto":
        chosen, reason = resolve_dtype(dtype, device), f"dtype {dtype} as configured"
    label = None if capability is None else f"{capability[0]}.{capability[1]}"
    return Precision(device, chosen, reason, label, device_name(device))


def run_key(settings: Mapping[str, object]) -> str:
    """A short digest of the settings that shape a run's numbers: shards with the same key belong together."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunPrecisionMismatch(RuntimeError):
    """Shards of one run would be computed on different device types or in different dtypes."""


def check_run_precision(figures_out: Path | str, precision: Precision, key: str) -> None:
    """Stop if a sibling shard of this run (same folder, same `key`) ran or runs on another device type or dtype.

    Then claim this shard's place: write `figures_out` now, marked as running, so that a sibling starting at the
    same time sees it (the job's final figures replace it; Snakemake removes it if the job fails).
    """
    figures_out = Path(figures_out)
    ours = (precision.device_type, precision.dtype)
    differing = []
    for path in sorted(figures_out.parent.glob("*.json")):
        if path.name == figures_out.name:
            continue
        try:
            theirs = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written this instant, or not ours: the merge still checks every finished shard
        if not isinstance(theirs, dict) or theirs.get("run_key") != key:
            continue
        other = (str(theirs.get("device", "")).split(":")[0], theirs.get("dtype"))
        if other != ours:
            where = theirs.get("device_name") or theirs.get("device")
            differing.append(f"{path.name} ({other[0]}/{other[1]} on {where})")
    if differing:
        raise RunPrecisionMismatch(
            f"{figures_out.name}: this job resolved {precision.device_type}/{precision.dtype} "
            f"({precision.device_name or precision.device}; {precision.reason}) but shards of the same run ran "
            f"as {', '.join(differing[:5])}{' ...' if len(differing) > 5 else ''}. Their results could not be "
            "merged. Make every job resolve alike: set the model's dtype (and device) explicitly, or ask for one "
            "GPU type (gpu_model); or delete those figures and shard outputs to redo the run on this hardware."
        )
    figures_out.parent.mkdir(parents=True, exist_ok=True)
    claim = {"status": "running", "run_key": key, **precision.figures()}
    figures_out.write_text(json.dumps(claim, indent=2) + "\n")


def precision_provenance(precision: Precision) -> dict[str, object]:
    """The Parquet provenance keys of a precision: what the merge compares across shards."""
    return {"dtype": precision.dtype, "device_type": precision.device_type}


__all__ = [
    "DTYPES",
    "MIN_DRIVER_FOR_CUDA",
    "Precision",
    "RunPrecisionMismatch",
    "auto_dtype",
    "check_run_precision",
    "compute_capability",
    "cuda_unavailable_message",
    "cuda_unavailable_reasons",
    "driver_version",
    "precision_provenance",
    "required_driver",
    "resolve_device",
    "resolve_dtype",
    "resolve_precision",
    "run_key",
]
