"""Build, inspect and smoke-test seqshard's container images through the Docker Engine API.

The images are defined under containers/: containers/base/Dockerfile is the one multi-stage build that installs
torch and seqshard; containers/<model>/Dockerfile starts FROM that base and adds the model's labels (and, on request,
a checkpoint baked in as the last layer). This module assembles each build's small context in a temporary folder:
the repository itself is never sent, since it holds results, logs and multi-gigabyte checkpoints.

It talks to a Docker engine, or to podman's Docker-compatible service (`podman system service --time=0
unix:///path/podman.sock`, then `DOCKER_HOST=unix:///path/podman.sock`), through the `docker` SDK. The SDK is a
test extra, imported only when an engine is needed, so `seqshard` itself never depends on it.

    python -m seqshard.images build --model dnabert2 --base IMAGE --tag TAG [--checkpoint DIR]   # or --model esm
    python -m seqshard.images inspect TAG
    python -m seqshard.images smoke TAG
    python -m seqshard.images context --model dnabert2 DIR   # the build contexts, for docker buildx
    python -m seqshard.images lock                # rewrite containers/base/requirements.txt from this environment

Served models (`seqshard serve` in a model image):

    python -m seqshard.images up --model dnabert2 --image TAG --checkpoint DIR [--cpus 4 --memory 16g --gpus 1]
    python -m seqshard.images status seqshard-dnabert2   # CPU, memory, network, disk; alerts over thresholds
    python -m seqshard.images down seqshard-dnabert2     # SIGTERM: requests in flight finish
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqshard.models import ARCHITECTURES

if TYPE_CHECKING:  # the SDK is optional: see connect()
    import docker

log = logging.getLogger(__name__)

# The model images and the architectures each carries. Every image holds the whole seqshard package (so any of them
# could run any model); an image's label and its place under the config's `containers:` say which models it is
# for. ESM-2 and the Nucleotide Transformer are one architecture family (the ESM encoder) and share an image.
IMAGES: dict[str, tuple[str, ...]] = {
    "dnabert2": ("dnabert2",),
    "lucaone": ("lucaone",),
    "esm": ("esm2", "nucleotide_transformer"),
}
MODELS = tuple(IMAGES)  # image names: containers/<name>/
DEFAULT_TORCH_VERSION = "2.13.0"
# PyTorch's wheel variant, matched to the default base image's CUDA (12.8); "cpu" for a CPU-only image.
DEFAULT_TORCH_CUDA = "cu128"
TORCH_WHEEL_INDEX = "https://download.pytorch.org/whl/{variant}"
# The model Dockerfiles' stage that bakes a checkpoint in; the default (last) stage has no weights.
CHECKPOINT_TARGET = "with-checkpoint"
# What the seqshard wheel is built from; everything else in the repository stays out of the image.
PACKAGE_SOURCES = ("pyproject.toml", "README.md", "seqshard")


@dataclass
class ImageInfo:
    """What `inspect` reports about one image."""

    id: str
    tags: list[str]
    size_bytes: int
    layers: int  # filesystem layers (RootFS); LABEL/ENV/USER instructions add none
    user: str
    entrypoint: list[str]
    env: dict[str, str]
    labels: dict[str, str]
    driver_requirement: str = ""  # what the image's torch build needs of the nodes' NVIDIA driver

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


def driver_requirement(torch_cuda: str | None) -> str:
    """The NVIDIA driver a torch wheel variant ('cu128', 'cu130', 'cpu') needs on the nodes, in words."""
    from seqshard.runtime.devices import required_driver  # imports torch: only when asked

    if not torch_cuda:
        return "unknown (the image has no io.seqshard.torch-cuda label)"
    if torch_cuda == "cpu":
        return "none: CPU-only torch, no GPU use"
    match = re.fullmatch(r"cu(\d+?)(\d)", torch_cuda)
    cuda = f"{match.group(1)}.{match.group(2)}" if match else None
    needed = required_driver(cuda)
    if needed is None:
        return f"unknown for torch variant {torch_cuda!r}"
    return f"NVIDIA driver >= {needed} (torch built for CUDA {cuda})"


@dataclass
class BuildResult:
    """The images one `build` made and how long each build took, in seconds."""

    base: ImageInfo
    image: ImageInfo
    seconds: dict[str, float] = field(default_factory=dict)


# --- build contexts ------------------------------------------------------------------------------------------


def find_repo(start: Path | None = None) -> Path:
    """The checkout that holds containers/base/Dockerfile: `start` or a parent of it, else this module's checkout."""
    candidates = [start or Path.cwd(), Path(__file__).resolve().parent]
    for candidate in candidates:
        for folder in (candidate.resolve(), *candidate.resolve().parents):
            if (folder / "containers" / "base" / "Dockerfile").is_file():
                return folder
    raise FileNotFoundError(
        "containers/base/Dockerfile not found above the current directory; run from a seqshard checkout or pass --repo"
    )


def build_wheel(repo: Path, dest: Path) -> Path:
    """Build the seqshard wheel from a copy of the package sources, so the checkout gets no build/ folder."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seqshard-wheel-") as tmp:
        # Not named "src": setuptools takes a folder of that name for a src-layout and finds no package.
        source = Path(tmp) / "seqshard-source"
        source.mkdir()
        for name in PACKAGE_SOURCES:
            path = repo / name
            if path.is_dir():
                shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif path.is_file():
                shutil.copy2(path, source / name)
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dest)]
        # The environment's own setuptools builds offline; without one, pip fetches it into an isolated env.
        try:
            import setuptools  # noqa: F401
        except ImportError:
            pass
        else:
            command.append("--no-build-isolation")
        subprocess.run([*command, str(source)], check=True)
    wheels = sorted(dest.glob("seqshard-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one seqshard wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def _copy_files(sources: Iterable[Path], dest: Path, pattern: str) -> list[Path]:
    """Copy files (or the files matching `pattern` in folders) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for source in sources:
        files = sorted(source.glob(pattern)) if source.is_dir() else [source]
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file")
            shutil.copy2(path, dest / path.name)
            copied.append(dest / path.name)
    return copied


def write_base_context(repo: Path, dest: Path, *, wheels: Sequence[Path] = (), extra_ca: Sequence[Path] = ()) -> Path:
    """The build context of containers/base/Dockerfile: Dockerfile, requirements.txt, dist/, wheels/, extra-ca/.

    `wheels` (files, or folders of *.whl) are offered to pip inside the build, e.g. the torch CPU wheel.
    `extra_ca` (files, or folders of *.crt) are trusted by the builder stage only; the final image never has them.
    """
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / "containers" / "base" / "Dockerfile", dest / "Dockerfile")
    shutil.copy2(repo / "containers" / "base" / "requirements.txt", dest / "requirements.txt")
    build_wheel(repo, dest / "dist")
    _copy_files(wheels, dest / "wheels", "*.whl")
    _copy_files(extra_ca, dest / "extra-ca", "*.crt")
    return dest


def write_model_context(repo: Path, model: str, dest: Path, *, checkpoint: Path | None = None) -> Path:
    """The build context of containers/<model>/Dockerfile, with the checkpoint folder as checkpoint/ if given."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; images exist for {', '.join(MODELS)}")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / "containers" / model / "Dockerfile", dest / "Dockerfile")
    if checkpoint is not None:
        if not (checkpoint / "config.json").is_file():
            raise FileNotFoundError(f"{checkpoint}: not a checkpoint folder (no config.json)")
        shutil.copytree(checkpoint, dest / "checkpoint", ignore=shutil.ignore_patterns(".cache", "__pycache__"))
    return dest


def context_digest(paths: Iterable[Path], *extra: str) -> str:
    """sha256 over the files (recursively) and strings given: the base Dockerfile's DEPS_/PACKAGE_DIGEST cache keys."""
    digest = hashlib.sha256()
    for text in extra:
        digest.update(text.encode() + b"\0")
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(file.name.encode() + b"\0")
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def base_buildargs(
    context: Path, *, base_image: str | None, torch_version: str, torch_cuda: str, torch_index_url: str | None
) -> dict[str, str]:
    """Build arguments of containers/base/Dockerfile for a context written by write_base_context.

    `torch_cuda` is PyTorch's wheel variant (cu128, cu130, cpu); `torch_index_url` None means PyTorch's index for
    that variant, "" no extra index (the wheel is in the context's wheels/).
    """
    if torch_index_url is None:
        torch_index_url = TORCH_WHEEL_INDEX.format(variant=torch_cuda)
    buildargs = {
        "TORCH_VERSION": torch_version,
        "TORCH_CUDA": torch_cuda,
        "TORCH_INDEX_URL": torch_index_url,
        "DEPS_DIGEST": context_digest(
            [context / "requirements.txt", context / "wheels"], torch_version, torch_cuda, torch_index_url
        ),
        "PACKAGE_DIGEST": context_digest([context / "dist"]),
    }
    if base_image:
        buildargs["BASE_IMAGE"] = base_image
    return buildargs


def base_tag_for(tag: str) -> str:
    """ghcr.io/seqshard/dnabert2:0.1.0 -> ghcr.io/seqshard/base:0.1.0: the base lives next to its model images."""
    name, _, version = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
    head, _, _ = name.rpartition("/")
    return f"{head}/base:{version}" if head else f"base:{version}"


# --- engine --------------------------------------------------------------------------------------------------


def connect(base_url: str | None = None) -> docker.DockerClient:
    """A client for DOCKER_HOST (or `base_url`): a Docker engine or podman's Docker-compatible service."""
    try:
        import docker
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "seqshard.images needs the Docker SDK: pip install 'seqshard[test]' (or pip install docker)"
        ) from error
    client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
    client.ping()
    return client


def build_image(
    client: docker.DockerClient,
    context: Path,
    tag: str,
    *,
    buildargs: Mapping[str, str] | None = None,
    target: str | None = None,
    no_cache: bool = False,
) -> ImageInfo:
    """Build `context` (its Dockerfile) as `tag`, logging the build output line by line."""
    options: dict[str, Any] = {
        "path": str(context),
        "tag": tag,
        "rm": True,
        "forcerm": True,
        "decode": True,
        "nocache": no_cache,
    }
    if buildargs:
        options["buildargs"] = dict(buildargs)
    if target:
        options["target"] = target
    tail: list[str] = []
    for chunk in client.api.build(**options):
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk.get("error")
            raise RuntimeError(f"building {tag} failed: {detail}\n" + "".join(tail[-30:]))
        text = chunk.get("stream", "")
        if text:
            tail.append(text)
            for line in text.splitlines():
                if line.strip():
                    log.debug("build %s: %s", tag, line)
    return inspect_image(client, tag)


def inspect_image(client: docker.DockerClient, ref: str) -> ImageInfo:
    """Size, filesystem layer count, user, entrypoint, env and labels of a local image."""
    attrs = client.images.get(ref).attrs
    config = attrs.get("Config") or {}
    env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
    labels = dict(config.get("Labels") or {})
    return ImageInfo(
        id=attrs["Id"],
        tags=list(attrs.get("RepoTags") or []),
        size_bytes=int(attrs.get("Size", 0)),
        layers=len((attrs.get("RootFS") or {}).get("Layers") or []),
        user=config.get("User") or "",
        entrypoint=list(config.get("Entrypoint") or []),
        env=env,
        labels=labels,
        driver_requirement=driver_requirement(labels.get("io.seqshard.torch-cuda")),
    )


def run_in_image(
    client: docker.DockerClient,
    ref: str,
    command: Sequence[str],
    *,
    entrypoint: str | list[str] | None = None,
    volumes: Mapping[str, Mapping[str, str]] | None = None,
    working_dir: str | None = None,
    user: str | None = None,
    gpus: bool = False,
) -> str:
    """Run `command` in a fresh container without network; return its output, raising when it exits non-zero.

    `gpus` asks the engine for every GPU of the host (docker --gpus all).
    """
    import docker

    container = client.containers.run(
        ref,
        list(command),
        entrypoint=entrypoint,
        volumes=dict(volumes or {}),
        working_dir=working_dir,
        user=user,
        network_mode="none",
        detach=True,
        device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpus else None,
    )
    try:
        status = container.wait()
        output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
    finally:
        container.remove(force=True)
    if status.get("StatusCode", 1) != 0:
        raise RuntimeError(f"{' '.join(command)} in {ref} exited with {status.get('StatusCode')}:\n{output}")
    return output


# Run inside the image by `smoke`: what torch sees there, and why it sees no GPU when it sees none.
_TORCH_REPORT = """
import json, torch
from seqshard.runtime.devices import cuda_unavailable_reasons
available = torch.cuda.is_available()
devices = [
    {"name": torch.cuda.get_device_name(i), "capability": "%d.%d" % torch.cuda.get_device_capability(i)}
    for i in range(torch.cuda.device_count() if available else 0)
]
print(json.dumps({"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": available,
                  "devices": devices, "why_no_cuda": [] if available else cuda_unavailable_reasons()}))
"""


def smoke(client: docker.DockerClient, ref: str, *, gpus: bool = False) -> dict[str, object]:
    """`seqshard --version` through the image's entrypoint, then what torch sees inside (version, CUDA build,
    whether CUDA is available, device names and compute capabilities, else why not); raises when either fails.

    `gpus` passes every GPU of the host into the container (the engine's --gpus all); without it the container
    sees none, and the report says so.
    """
    version = run_in_image(client, ref, ["--version"]).strip()
    if not version.startswith("seqshard "):
        raise RuntimeError(f"{ref}: `seqshard --version` printed {version!r}")
    report = run_in_image(client, ref, ["-c", _TORCH_REPORT], entrypoint="python", gpus=gpus)
    return {"seqshard": version.removeprefix("seqshard "), **json.loads(report.strip().splitlines()[-1])}


def build_model_image(
    client: docker.DockerClient,
    model: str,
    tag: str,
    *,
    base_image: str | None = None,
    base_tag: str | None = None,
    checkpoint: Path | None = None,
    wheels: Sequence[Path] = (),
    extra_ca: Sequence[Path] = (),
    torch_version: str = DEFAULT_TORCH_VERSION,
    torch_cuda: str = DEFAULT_TORCH_CUDA,
    torch_index_url: str | None = None,
    repo: Path | None = None,
    no_cache: bool = False,
) -> BuildResult:
    """Build the seqshard base image, then the model image on top of it; time both."""
    repo = repo or find_repo()
    base_tag = base_tag or base_tag_for(tag)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="seqshard-image-") as tmp:
        start = time.perf_counter()
        base_context = write_base_context(repo, Path(tmp) / "base", wheels=wheels, extra_ca=extra_ca)
        buildargs = base_buildargs(
            base_context, base_image=base_image, torch_version=torch_version, torch_cuda=torch_cuda,
            torch_index_url=torch_index_url,
        )  # fmt: skip
        log.info("building %s from %s", base_tag, base_image or "the Dockerfile's default base image")
        base = build_image(client, base_context, base_tag, buildargs=buildargs, no_cache=no_cache)
        seconds["base"] = time.perf_counter() - start

        start = time.perf_counter()
        model_context = write_model_context(repo, model, Path(tmp) / model, checkpoint=checkpoint)
        log.info("building %s on %s%s", tag, base_tag, f" with checkpoint {checkpoint}" if checkpoint else "")
        image = build_image(
            client,
            model_context,
            tag,
            buildargs={"SEQSHARD_BASE": base_tag},
            target=CHECKPOINT_TARGET if checkpoint else None,
            no_cache=no_cache,
        )
        seconds[model] = time.perf_counter() - start
    return BuildResult(base=base, image=image, seconds=seconds)


# --- served model containers ---------------------------------------------------------------------------------

SERVE_PORT = 8000  # where `seqshard serve` listens inside the container (the image's HEALTHCHECK checks it)
METRICS_PORT = 8001
MODELS_MOUNT = "/app/models"  # the checkpoint directory, mounted read-only
API_KEY_MOUNT = "/run/secrets/seqshard-api-key"


@dataclass(frozen=True)
class AlertThresholds:
    """Above these, `container_status` logs an alert (README, "Serving": the compose alert rules match)."""

    cpu_percent: float = 80.0  # of the CPUs the container may use
    memory_percent: float = 90.0  # of its memory limit
    disk_bytes: int = 1 << 30  # written to its own filesystem layer: a model server should write next to nothing


@dataclass
class ContainerStatus:
    """One reading of a served model container's state and resource use."""

    name: str
    state: str  # running, exited, ...
    health: str | None  # healthy, unhealthy, starting; None when the image has no health check
    cpu_percent: float
    memory_bytes: int
    memory_limit_bytes: int
    memory_percent: float
    network_received_bytes: int
    network_sent_bytes: int
    disk_read_bytes: int
    disk_written_bytes: int
    disk_bytes: int  # size of the container's writable layer
    alerts: list[str] = field(default_factory=list)


def serve_options(
    model: str,
    image: str,
    checkpoint: Path,
    *,
    name: str,
    port: int = SERVE_PORT,
    metrics_port: int = METRICS_PORT,
    address: str = "127.0.0.1",
    cpus: float | None = None,
    memory: str | None = None,
    gpus: int = 0,
    api_key_file: Path | None = None,
    serve_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Keyword arguments of `client.containers.run` for `seqshard serve` in `image`: the checkpoint read-only at
    /app/models, the API and metrics ports published on `address` of the host, CPU and memory limits, and
    `gpus` GPUs requested from the engine (the NVIDIA container toolkit). `model` is the architecture served."""
    if model not in ARCHITECTURES:
        raise ValueError(f"unknown model {model!r}; architectures: {', '.join(ARCHITECTURES)}")
    checkpoint = Path(checkpoint).resolve()
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint}: not a checkpoint folder (no config.json)")
    command = ["serve", "--model", model, "--checkpoint", MODELS_MOUNT, "--port", str(SERVE_PORT),
               "--metrics-port", str(METRICS_PORT), *serve_args]  # fmt: skip
    volumes = {str(checkpoint): {"bind": MODELS_MOUNT, "mode": "ro"}}
    if api_key_file is not None:
        volumes[str(Path(api_key_file).resolve())] = {"bind": API_KEY_MOUNT, "mode": "ro"}
        command += ["--api-key-file", API_KEY_MOUNT]
    options: dict[str, Any] = {
        "image": image,
        "command": command,
        "name": name,
        "detach": True,
        "volumes": volumes,
        "ports": {f"{SERVE_PORT}/tcp": (address, port), f"{METRICS_PORT}/tcp": (address, metrics_port)},
        "environment": {"SEQSHARD_SERVE_HOST": "0.0.0.0"},  # inside the container; published on `address` only
        "labels": {"io.seqshard.serve": model},
    }
    if cpus is not None:
        options["nano_cpus"] = int(cpus * 1e9)
    if memory is not None:
        options["mem_limit"] = memory
    if gpus:
        import docker

        options["device_requests"] = [docker.types.DeviceRequest(count=gpus, capabilities=[["gpu"]])]
    return options


def up(client: docker.DockerClient, model: str, image: str, checkpoint: Path, **options: Any) -> Any:
    """Start a served model container (see serve_options); returns the container."""
    container = client.containers.run(**serve_options(model, image, checkpoint, **options))
    log.info("started %s (%s) from %s", container.name, model, image)
    return container


def down(client: docker.DockerClient, name: str, timeout: int = 60) -> None:
    """Stop the container with SIGTERM (requests in flight finish; SIGKILL after `timeout` s) and remove it."""
    container = client.containers.get(name)
    container.stop(timeout=timeout)
    container.remove()
    log.info("stopped and removed %s", name)


def _cpu_percent(stats: Mapping[str, Any]) -> float:
    """CPU use between the engine's two readings, as a percent of the CPUs the container may use."""
    now, before = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    used = (now.get("cpu_usage") or {}).get("total_usage", 0) - (before.get("cpu_usage") or {}).get("total_usage", 0)
    elapsed = now.get("system_cpu_usage", 0) - before.get("system_cpu_usage", 0)
    cpus = now.get("online_cpus") or len((now.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    return 100.0 * used / elapsed * cpus if used > 0 and elapsed > 0 else 0.0


def container_status(
    client: docker.DockerClient, name: str, thresholds: AlertThresholds = AlertThresholds()
) -> ContainerStatus:
    """Read the container's CPU, memory, network and disk figures; log a warning for each threshold crossed."""
    container = client.containers.get(name)
    stats = container.stats(stream=False)
    memory = stats.get("memory_stats") or {}
    memory_bytes, limit = int(memory.get("usage", 0)), int(memory.get("limit", 0))
    networks = (stats.get("networks") or {}).values()
    block = (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []
    listed = client.api.containers(all=True, size=True, filters={"name": name})
    health = (container.attrs.get("State") or {}).get("Health") or {}
    status = ContainerStatus(
        name=name,
        state=container.status,
        health=health.get("Status") or None,
        cpu_percent=_cpu_percent(stats),
        memory_bytes=memory_bytes,
        memory_limit_bytes=limit,
        memory_percent=100.0 * memory_bytes / limit if limit else 0.0,
        network_received_bytes=sum(int(n.get("rx_bytes", 0)) for n in networks),
        network_sent_bytes=sum(int(n.get("tx_bytes", 0)) for n in networks),
        disk_read_bytes=sum(int(e.get("value", 0)) for e in block if str(e.get("op")).lower() == "read"),
        disk_written_bytes=sum(int(e.get("value", 0)) for e in block if str(e.get("op")).lower() == "write"),
        disk_bytes=int(next((c.get("SizeRw") or 0 for c in listed if name in [n.lstrip("/") for n in c["Names"]]), 0)),
    )
    for figure, value, limit_value, unit in (
        ("CPU", status.cpu_percent, thresholds.cpu_percent, "%"),
        ("memory", status.memory_percent, thresholds.memory_percent, "% of its limit"),
        ("disk", status.disk_bytes, thresholds.disk_bytes, " bytes written to its layer"),
    ):
        if value > limit_value:
            status.alerts.append(f"{name}: {figure} at {value:.1f}{unit}, over the {limit_value:g} threshold")
    for alert in status.alerts:
        log.warning("ALERT %s", alert)
    return status


# --- the pinned dependency list ------------------------------------------------------------------------------


def runtime_requirements(package: str = "seqshard", exclude: Iterable[str] = ("seqshard", "torch")) -> list[str]:
    """`name==version` for every installed distribution `package` needs at run time (markers of this Python).

    torch is left out: its build (CPU or CUDA) is chosen per image with the TORCH_CUDA build argument.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    skip = {canonicalize_name(name) for name in exclude}
    versions: dict[str, str] = {}
    pending = [package]
    while pending:
        name = pending.pop()
        key = canonicalize_name(name)
        if key in versions:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError as error:
            raise RuntimeError(f"{name} is required by {package} but not installed here") from error
        versions[key] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return [f"{name}=={version}" for name, version in sorted(versions.items()) if name not in skip]


def write_lock(repo: Path) -> Path:
    """Rewrite containers/base/requirements.txt from the versions installed in this environment."""
    path = repo / "containers" / "base" / "requirements.txt"
    header = (
        "# Pinned runtime dependencies of the seqshard images; torch is chosen with the TORCH_CUDA build arg.\n"
        "# Generated from the environment the tests pass in: python -m seqshard.images lock\n"
    )
    path.write_text(header + "\n".join(runtime_requirements()) + "\n")
    return path


# --- command line --------------------------------------------------------------------------------------------


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m seqshard.images", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show the build output")
    parser.add_argument("--repo", type=Path, help="seqshard checkout (default: found above the current directory)")
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build the seqshard base image and a model image on it")
    build.add_argument("--model", required=True, choices=MODELS, help="image: containers/<model>/")
    build.add_argument("--tag", required=True, help="model image tag, e.g. ghcr.io/seqshard/dnabert2:0.1.0")
    build.add_argument("--base", help="BASE_IMAGE: a CUDA runtime image with Python >= 3.11 (Dockerfile default)")
    build.add_argument("--base-tag", help="tag of the seqshard base image (default: <tag's registry>/base:<version>)")
    build.add_argument("--checkpoint", type=Path, help="bake this checkpoint folder in as the last layer")
    build.add_argument("--wheels", type=Path, action="append", default=[], help="local wheel file or folder for pip")
    build.add_argument("--torch-version", default=DEFAULT_TORCH_VERSION, help="torch version (default: %(default)s)")
    build.add_argument(
        "--torch-cuda", default=DEFAULT_TORCH_CUDA,
        help="PyTorch wheel variant matching the base's CUDA: cu128 (default, CUDA 12.8 base), cu130, or cpu",
    )  # fmt: skip
    build.add_argument(
        "--torch-index-url", help="index holding that torch (default: download.pytorch.org/whl/<variant>; '': none)"
    )
    build.add_argument(
        "--extra-ca", type=Path, action="append", default=[], help="*.crt file or folder trusted while building only"
    )
    build.add_argument("--no-cache", action="store_true", help="rebuild every layer")

    inspect = commands.add_parser("inspect", help="print size, layer count, user, labels and the driver requirement")
    inspect.add_argument("ref", help="image tag or id")
    smoke_parser = commands.add_parser("smoke", help="run seqshard --version and report what torch sees inside")
    smoke_parser.add_argument("ref", help="image tag or id")
    smoke_parser.add_argument("--gpus", action="store_true", help="give the container every GPU (--gpus all)")

    context = commands.add_parser("context", help="write the build contexts for use with docker buildx")
    context.add_argument("--model", required=True, choices=MODELS, help="image: containers/<model>/")
    context.add_argument("--checkpoint", type=Path, help="checkpoint folder to include as checkpoint/")
    context.add_argument("--wheels", type=Path, action="append", default=[])
    context.add_argument("--extra-ca", type=Path, action="append", default=[])
    context.add_argument("output", type=Path, help="folder to create; gets base/ and <model>/")

    commands.add_parser("lock", help="rewrite containers/base/requirements.txt from this environment")

    serve = commands.add_parser("up", help="start a served model container (seqshard serve in the image)")
    serve.add_argument("--model", required=True, choices=list(ARCHITECTURES), help="architecture to serve")
    serve.add_argument("--image", required=True, help="model image tag")
    serve.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder, mounted read-only")
    serve.add_argument("--name", help="container name (default: seqshard-<model>)")
    serve.add_argument("--port", type=int, default=SERVE_PORT, help="host port of the API")
    serve.add_argument("--metrics-port", type=int, default=METRICS_PORT, help="host port of the Prometheus metrics")
    serve.add_argument("--address", default="127.0.0.1", help="host address the ports are published on")
    serve.add_argument("--cpus", type=float, help="CPU limit, e.g. 4")
    serve.add_argument("--memory", help="memory limit, e.g. 16g")
    serve.add_argument("--gpus", type=int, default=0, help="GPUs to request (NVIDIA container toolkit)")
    serve.add_argument("--api-key-file", type=Path, help="require this API key (mounted read-only)")
    down_parser = commands.add_parser("down", help="stop (gracefully) and remove a served model container")
    down_parser.add_argument("name")
    status = commands.add_parser("status", help="CPU, memory, network and disk of a served model container")
    status.add_argument("name")
    status.add_argument("--cpu-alert", type=float, default=AlertThresholds.cpu_percent, help="percent")
    status.add_argument("--memory-alert", type=float, default=AlertThresholds.memory_percent, help="percent")
    status.add_argument("--disk-alert", type=int, default=AlertThresholds.disk_bytes, help="bytes")
    return parser


def run(args: argparse.Namespace) -> None:
    repo = find_repo(args.repo)
    if args.command == "build":
        client = connect()
        result = build_model_image(
            client,
            args.model,
            args.tag,
            base_image=args.base,
            base_tag=args.base_tag,
            checkpoint=args.checkpoint,
            wheels=args.wheels,
            extra_ca=args.extra_ca,
            torch_version=args.torch_version,
            torch_cuda=args.torch_cuda,
            torch_index_url=args.torch_index_url,
            repo=repo,
            no_cache=args.no_cache,
        )
        print(json.dumps(asdict(result), indent=2))
    elif args.command == "inspect":
        info = inspect_image(connect(), args.ref)
        print(json.dumps(asdict(info), indent=2))
        print(f"driver requirement: {info.driver_requirement}")
    elif args.command == "smoke":
        print(json.dumps(smoke(connect(), args.ref, gpus=args.gpus), indent=2))
    elif args.command == "context":
        write_base_context(repo, args.output / "base", wheels=args.wheels, extra_ca=args.extra_ca)
        write_model_context(repo, args.model, args.output / args.model, checkpoint=args.checkpoint)
        print(args.output)
    elif args.command == "lock":
        print(write_lock(repo))
    elif args.command == "up":
        container = up(
            connect(), args.model, args.image, args.checkpoint, name=args.name or f"seqshard-{args.model}",
            port=args.port, metrics_port=args.metrics_port, address=args.address, cpus=args.cpus, memory=args.memory,
            gpus=args.gpus, api_key_file=args.api_key_file,
        )  # fmt: skip
        print(container.name)
    elif args.command == "down":
        down(connect(), args.name)
    elif args.command == "status":
        thresholds = AlertThresholds(args.cpu_alert, args.memory_alert, args.disk_alert)
        print(json.dumps(asdict(container_status(connect(), args.name, thresholds)), indent=2))


def main(argv: list[str] | None = None) -> int:
    args = create_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        run(args)
    except (ValueError, FileNotFoundError, RuntimeError, subprocess.CalledProcessError) as error:
        log.error("%s", error)
        return 1
    except Exception as error:  # the SDK's errors (engine unreachable, API errors) without importing it here
        if not type(error).__module__.startswith(("docker", "requests", "urllib3")):
            raise
        log.error("container engine: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
