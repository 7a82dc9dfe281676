"""The container images, built and run for real: podman builds the DNABERT-2 image through seqshard.images (the
Docker SDK talking to podman's Docker-compatible service), `seqshard embed` runs inside it, and the demo workflow
runs with `snakemake --sdm apptainer` so every inference job executes in the image.

Nothing is mocked except apptainer itself, which Debian 12 cannot install: tests/apptainer/apptainer is a stand-in
that runs the images under podman (see its header). The machine needs podman, runc and debootstrap, which
tests/setup-system installs. Under CI=true a missing tool fails the tests instead of skipping them.

The Debian base image, podman's storage and its build cache live in SEQSHARD_TEST_CONTAINER_CACHE (default
/var/tmp/seqshard-test-base), so a rerun on the same machine skips debootstrap and reuses unchanged layers. A cold
build (debootstrap, apt, pip from PyPI, 1.9 GB of layers) takes several minutes on 2 cores; a warm one seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from seqshard import images

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "tests" / "apptainer"
CACHE = Path(os.environ.get("SEQSHARD_TEST_CONTAINER_CACHE", "/var/tmp/seqshard-test-base"))
DEBIAN_IMAGE = "localhost/seqshard-test/debian:bookworm"
BASE_TAG = "localhost/seqshard-test/base:test"
IMAGE = "localhost/seqshard-test/dnabert2:test"
# What tests/setup-system installs for these tests (named in the message when a tool is missing).
APT_PACKAGES = [
    "podman",
    "buildah",
    "runc",
    "fuse-overlayfs",
    "uidmap",
    "debootstrap",
    "slirp4netns",
    "containernetworking-plugins",
]
REQUIRED_TOOLS = ["podman", "runc", "debootstrap"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# What the compiler check looks for: none of these may exist in the runtime image.
COMPILERS = ["gcc", "cc", "g++", "c++", "clang", "ld"]

# containers.conf as environment.md records it: crun refuses this machine's hybrid cgroups, there is no systemd
# for cgroups or the journal, and the default ulimits cannot be raised inside this VM.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def unavailable(reason: str) -> None:
    """Skip on a developer machine without the tools; fail in CI, where a silent skip would hide a broken job."""
    if IN_CI:
        pytest.fail(f"container tests cannot run: {reason}")
    pytest.skip(reason)


def run(*command: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=True, text=True, capture_output=True, **kwargs)


# --- machine set-up ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def container_tools() -> None:
    """podman, runc and debootstrap, which tests/setup-system installs (with the rest of APT_PACKAGES)."""
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        unavailable(
            f"missing {', '.join(missing)}: run tests/setup-system as root (apt-get install {' '.join(APT_PACKAGES)})"
        )
    try:
        import docker  # noqa: F401
    except ImportError:
        unavailable("the docker SDK is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="session")
def podman_env(container_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """CONTAINERS_CONF and CONTAINERS_STORAGE_CONF for every podman this session starts, the stand-in's included.

    Storage sits in CACHE so the base image and build cache survive the session; runroot too, because podman
    refuses a storage whose recorded runroot differs.
    """
    conf = tmp_path_factory.mktemp("podman")
    (conf / "containers.conf").write_text(CONTAINERS_CONF)
    (conf / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{CACHE / "storage"}"\nrunroot = "{CACHE / "runroot"}"\n'
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    values = {"CONTAINERS_CONF": str(conf / "containers.conf"), "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        yield values


def debian_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 or one-line sources), else deb.debian.org."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split()
            if line.startswith("URIs:") and "security" not in line and len(words) > 1:
                return words[1]
            if words[:1] == ["deb"] and "security" not in line:
                return next(word for word in words[1:] if "://" in word)
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="session")
def debian_image(podman_env: dict[str, str]) -> str:
    """A Debian bookworm base image made with debootstrap (no registry is reachable), made once per machine."""
    if subprocess.run(["podman", "image", "exists", DEBIAN_IMAGE]).returncode == 0:
        return DEBIAN_IMAGE
    rootfs = CACHE / "rootfs.tmp"
    shutil.rmtree(rootfs, ignore_errors=True)
    try:
        run("debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror())
        # Through a pipe, not a tarball on disk: 200 MB less to write.
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run("podman", "import", "-", DEBIAN_IMAGE, stdin=tar.stdout)
        assert tar.wait() == 0
    except subprocess.CalledProcessError as error:
        unavailable(f"could not make {DEBIAN_IMAGE}: {error}\n{error.stderr[-2000:]}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return DEBIAN_IMAGE


@pytest.fixture(scope="session")
def engine(podman_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """podman's Docker-compatible API on a private socket, and a Docker SDK client for it; stopped by its PID."""
    sock = tmp_path_factory.mktemp("engine") / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if service.poll() is not None or time.monotonic() > deadline:
                unavailable(f"podman system service did not start: {service.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DOCKER_HOST", f"unix://{sock}")
            yield images.connect()
    finally:
        service.terminate()
        try:
            service.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


def local_torch_wheels() -> list[Path]:
    """The torch wheel pip finds on this machine (PIP_FIND_LINKS), matching the torch the host tests use."""
    import torch

    found = []
    for folder in os.environ.get("PIP_FIND_LINKS", "").split():
        found += Path(folder.removeprefix("file://")).glob(f"torch-{torch.__version__}-*.whl")
    return sorted(found)[:1]


@pytest.fixture(scope="session")
def built(engine, debian_image: str) -> images.BuildResult:
    """The DNABERT-2 image, built the way users build it, from the local Debian image and the host's torch."""
    import torch

    wheels = local_torch_wheels()
    # The machine's own extra CA certificates (what update-ca-certificates adds): pip inside the build needs
    # them to reach PyPI here. They stay in the builder stage.
    local_ca = Path("/usr/local/share/ca-certificates")
    extra_ca = [local_ca] if any(local_ca.rglob("*.crt")) else []
    result = images.build_model_image(
        engine,
        "dnabert2",
        IMAGE,
        base_image=debian_image,
        base_tag=BASE_TAG,
        wheels=wheels,
        extra_ca=extra_ca,
        # The host's torch, e.g. 2.13.0+cpu: version 2.13.0 of PyTorch's cpu variant.
        torch_version=torch.__version__.split("+")[0],
        torch_cuda="cpu",
        torch_index_url="" if wheels else None,
        repo=REPO,
    )
    print(
        f"\nbuilt {IMAGE}: {result.image.size_mb:.0f} MB, {result.image.layers} layers, "
        f"build seconds {json.dumps({k: round(v, 1) for k, v in result.seconds.items()})}"
    )
    return result


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo checkpoint and a demo FASTA in a folder the container reads through a bind mount."""
    from seqshard.models.dnabert2 import write_demo_checkpoint

    folder = tmp_path_factory.mktemp("demo-inputs")
    write_demo_checkpoint(folder / "checkpoint")
    shutil.copy2(REPO / "resources" / "demo" / "sample_b.fa.gz", folder / "sample_b.fa.gz")
    # pytest makes its folders 0700; the image's user (uid 10001) must read them through the bind mount.
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


@pytest.fixture(scope="session")
def host_embeddings(demo_inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("host") / "host.parquet"
    run(sys.executable, "-m", "seqshard", "embed", str(demo_inputs / "sample_b.fa.gz"), "-o", str(output),
        "--checkpoint", str(demo_inputs / "checkpoint"), "--threads", "2")  # fmt: skip
    return output


def assert_same_embeddings(expected: Path, actual: Path) -> None:
    """Same rows in the same order with the same vectors: the image computes what the host computes."""
    want, got = pq.read_table(expected), pq.read_table(actual)
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert got.num_rows > 0
    for name in ("length", "n_tokens"):
        assert got.column(name).to_pylist() == want.column(name).to_pylist()
    np.testing.assert_allclose(
        np.stack(got.column("embedding").to_numpy(zero_copy_only=False)),
        np.stack(want.column("embedding").to_numpy(zero_copy_only=False)),
        rtol=0,
        atol=1e-6,
    )


def embed_in_image(engine, ref: str, inputs: Path, checkpoint: str, out_dir: Path) -> Path:
    out_dir.mkdir(exist_ok=True)
    out_dir.chmod(0o777)  # the image's user (uid 10001) writes here
    command = ["embed", "/inputs/sample_b.fa.gz", "-o", "/outputs/image.parquet", "--checkpoint", checkpoint,
               "--threads", "2"]  # fmt: skip
    images.run_in_image(
        engine,
        ref,
        command,
        volumes={str(inputs): {"bind": "/inputs", "mode": "ro"}, str(out_dir): {"bind": "/outputs", "mode": "rw"}},
    )
    return out_dir / "image.parquet"


# --- the image -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_image_has_few_layers_no_weights_and_is_offline(built: images.BuildResult) -> None:
    image = built.image
    assert image.layers <= 10
    # LABEL-only model stage: the model image is the base's layers, nothing more.
    assert image.layers == built.base.layers
    assert image.user and image.user not in ("root", "0")
    assert image.env["HF_HUB_OFFLINE"] == "1"
    assert image.labels["io.seqshard.architecture"] == "dnabert2"
    assert "SEQSHARD_CHECKPOINT" not in image.env
    assert image.entrypoint == ["seqshard"]
    assert image.labels["io.seqshard.torch-cuda"] == "cpu"
    assert image.driver_requirement == "none: CPU-only torch, no GPU use"


@pytest.mark.slow
def test_image_runs_as_non_root_without_compilers_pip_or_ca_extras(engine, built: images.BuildResult) -> None:
    uid = images.run_in_image(engine, IMAGE, ["-u"], entrypoint="id").strip()
    assert uid.isdigit() and int(uid) != 0
    found = images.run_in_image(
        engine,
        IMAGE,
        ["-c", 'for tool in "$@"; do command -v "$tool"; done; true', "sh", *COMPILERS, "pip", "pip3"],
        entrypoint="sh",
    )
    assert found.strip() == ""
    extras = images.run_in_image(
        engine, IMAGE, ["-c", "ls /usr/local/share/ca-certificates /opt/seqshard-checkpoint 2>/dev/null; true"],
        entrypoint="sh",
    )  # fmt: skip
    assert extras.strip() == ""


@pytest.mark.slow
def test_smoke_reports_what_torch_sees(engine, built: images.BuildResult) -> None:
    import torch

    from seqshard import __version__

    report = images.smoke(engine, IMAGE)
    assert {key: report[key] for key in ("seqshard", "torch", "cuda_build", "cuda_available", "devices")} == {
        "seqshard": __version__, "torch": torch.__version__, "cuda_build": None, "cuda_available": False, "devices": [],
    }  # fmt: skip
    assert any("CPU-only build" in reason for reason in report["why_no_cuda"])
    assert any("no NVIDIA device files" in reason for reason in report["why_no_cuda"])


def test_driver_requirement_of_each_torch_variant() -> None:
    assert images.driver_requirement("cu128") == "NVIDIA driver >= 525.60.13 (torch built for CUDA 12.8)"
    assert images.driver_requirement("cu130") == "NVIDIA driver >= 580.65.06 (torch built for CUDA 13.0)"
    assert images.driver_requirement("cu118") == "NVIDIA driver >= 450.80.02 (torch built for CUDA 11.8)"
    assert images.driver_requirement("cpu").startswith("none")
    assert images.driver_requirement(None).startswith("unknown")
    assert images.build_model_image.__kwdefaults__["torch_cuda"] == "cu128"  # the default base is CUDA 12.8


def test_pinned_image_requirements_satisfy_the_package() -> None:
    """Every runtime dependency seqshard declares is pinned in the image's lock, at a version it accepts.

    Without this a new dependency surfaces only as a failed `pip check` deep inside a container build.
    """
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = REPO / "containers" / "base" / "requirements.txt"
    pinned = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[canonicalize_name(name)] = version
    missing = []
    for line in requires("seqshard") or []:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == "torch" or (requirement.marker is not None and not requirement.marker.evaluate({"extra": ""})):
            continue
        if name not in pinned or not requirement.specifier.contains(pinned[name], prereleases=True):
            missing.append(f"{requirement} (pinned: {pinned.get(name, 'nothing')})")
    assert not missing, f"{lock} lacks {missing}; run python -m seqshard.images lock"


@pytest.mark.slow
def test_embed_in_image_equals_host(
    engine, built: images.BuildResult, demo_inputs: Path, host_embeddings: Path, tmp_path: Path
) -> None:
    output = embed_in_image(engine, IMAGE, demo_inputs, "/inputs/checkpoint", tmp_path / "out")
    assert_same_embeddings(host_embeddings, output)


@pytest.mark.slow
def test_checkpoint_baked_in_as_last_layer(
    engine, built: images.BuildResult, demo_inputs: Path, host_embeddings: Path, tmp_path: Path
) -> None:
    baked_tag = "localhost/seqshard-test/dnabert2:baked"
    context = images.write_model_context(REPO, "dnabert2", tmp_path / "context", checkpoint=demo_inputs / "checkpoint")
    baked = images.build_image(
        engine, context, baked_tag, buildargs={"SEQSHARD_BASE": BASE_TAG}, target=images.CHECKPOINT_TARGET
    )
    assert baked.layers == built.image.layers + 1 <= 10
    layers = engine.images.get(baked_tag).attrs["RootFS"]["Layers"]
    assert layers[:-1] == engine.images.get(IMAGE).attrs["RootFS"]["Layers"]
    assert baked.env["SEQSHARD_CHECKPOINT"] == "/opt/seqshard-checkpoint"
    output = embed_in_image(engine, baked_tag, demo_inputs, "/opt/seqshard-checkpoint", tmp_path / "out")
    assert_same_embeddings(host_embeddings, output)


@pytest.mark.slow
def test_lucaone_image_shares_the_base(engine, built: images.BuildResult, tmp_path: Path) -> None:
    tag = "localhost/seqshard-test/lucaone:test"
    context = images.write_model_context(REPO, "lucaone", tmp_path / "context")
    lucaone = images.build_image(engine, context, tag, buildargs={"SEQSHARD_BASE": BASE_TAG})
    assert lucaone.labels["io.seqshard.architecture"] == "lucaone"
    assert engine.images.get(tag).attrs["RootFS"] == engine.images.get(IMAGE).attrs["RootFS"]
    assert images.smoke(engine, tag)["torch"]


# --- the workflow in the image: snakemake --sdm apptainer ------------------------------------------------------


def write_workflow_dir(workdir: Path) -> None:
    """Two demo samples, one DNABERT-2 model, shards small enough that each sample has several inference jobs."""
    (workdir / "resources").mkdir(parents=True)
    shutil.copytree(REPO / "resources" / "demo", workdir / "resources" / "demo")
    (workdir / "samples.tsv").write_text(
        "sample\tfasta\tmolecule\n"
        "sample_a\tresources/demo/sample_a.fa\tdna\n"
        "sample_b\tresources/demo/sample_b.fa.gz\tdna\n"
    )
    config = {
        "samples": "samples.tsv",
        "on_invalid": "skip",
        "shards": {"target_tokens": 40000},
        "models": {"dnabert2": {"architecture": "dnabert2", "checkpoint": "resources/checkpoints/dnabert2-demo"}},
        "containers": {"dnabert2": f"docker://{IMAGE}"},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


TARGETS = ["results/sample_a/dnabert2/embed.parquet", "results/sample_b/dnabert2/embed.parquet"]


def snakemake(workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory",
               str(workdir), "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=workdir, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def standin_env(log: Path) -> dict[str, str]:
    """The stand-in first on PATH, and where it records each call."""
    path = f"{STANDIN}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "SEQSHARD_APPTAINER_STANDIN_LOG": str(log)}


def inference_jobs(workdir: Path) -> int:
    """Inference jobs the run made: one figures file each (results/packs/<model>/figures/<pass>/<shard>.json)."""
    return len(list((workdir / "results" / "packs" / "dnabert2" / "figures").glob("*/*.json")))


@pytest.fixture(scope="session")
def host_workflow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow-host")
    write_workflow_dir(workdir)
    snakemake(workdir, *TARGETS)
    return workdir


def check_every_inference_job_ran_in_image(workdir: Path, log: Path, image_id: str) -> None:
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    pulls = [call for call in calls if call["subcommand"] == "pull"]
    execs = [call for call in calls if call["subcommand"] == "exec"]
    assert [pull["image"] for pull in pulls] == [IMAGE]
    # One exec per inference job and none for the other rules, which declare no container.
    assert len(execs) == inference_jobs(workdir) >= 1
    for call in execs:
        assert call["image_id"].removeprefix("sha256:") == image_id.removeprefix("sha256:")
        assert call["exit_status"] == 0
        assert ".infer_shard.py" in call["command"]
        assert call["command"].startswith(("bash -c", "sh -c"))


@pytest.mark.workflow
def test_workflow_with_sdm_apptainer_runs_inference_in_the_image(
    built: images.BuildResult, host_workflow: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "workflow"
    write_workflow_dir(workdir)
    log = tmp_path / "apptainer-calls.jsonl"
    started = time.time()
    snakemake(workdir, *TARGETS, "--sdm", "apptainer", env=standin_env(log))  # --sdm takes several values: last
    check_every_inference_job_ran_in_image(workdir, log, built.image.id)
    assert inference_jobs(workdir) >= 2  # several shards, each its own container
    # podman's own account, independent of the stand-in's log: containers of the image that ended with status 0.
    died = run("podman", "events", "--stream=false", "--since", str(int(started) - 1), "--filter", "event=died",
               "--format", "{{.Image}} {{.ContainerExitCode}}").stdout.splitlines()  # fmt: skip
    ran = [line.split() for line in died if line.split()[:1] in ([IMAGE], [built.image.id.removeprefix("sha256:")])]
    assert len(ran) == inference_jobs(workdir)
    assert all(status == "0" for _, status in ran)
    for target in TARGETS:
        assert_same_embeddings(host_workflow / target, workdir / target)


@pytest.mark.workflow
def test_workflow_with_use_singularity_alias(built: images.BuildResult, host_workflow: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "workflow"
    write_workflow_dir(workdir)
    log = tmp_path / "apptainer-calls.jsonl"
    target = "results/sample_b/dnabert2/embed.parquet"
    snakemake(workdir, "--use-singularity", target, env=standin_env(log))
    check_every_inference_job_ran_in_image(workdir, log, built.image.id)
    assert_same_embeddings(host_workflow / target, workdir / target)


def test_standin_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    """The stand-in must fail loudly, never run something apptainer would run differently."""
    standin = str(STANDIN / "apptainer")
    version = run(standin, "--version").stdout
    assert version.startswith("apptainer version ")
    for args in (["build", "x.sif", "x.def"], ["exec", "--fakeroot", "x.sif", "true"], ["pull", "library://x"]):
        done = subprocess.run([standin, *args], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 255, args
        assert "stand-in" in done.stderr


# --- the Apptainer definitions (no apptainer here: checked against the Dockerfiles they mirror) ----------------


def dockerfile_arg_default(path: Path, name: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"ARG {name}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{path} has no ARG {name}=")


def def_arguments(path: Path) -> dict[str, str]:
    """The %arguments defaults of every stage of an Apptainer definition file."""
    found: dict[str, str] = {}
    section = None
    for line in path.read_text().splitlines():
        if line.startswith("%"):
            section = line.split()[0]
        elif section == "%arguments" and "=" in line:
            key, value = line.strip().split("=", 1)
            assert found.setdefault(key, value) == value, f"{path}: stages disagree on {key}"
    return found


def test_apptainer_definitions_mirror_the_dockerfiles() -> None:
    base_def, base_dockerfile = REPO / "containers" / "base" / "base.def", REPO / "containers" / "base" / "Dockerfile"
    arguments = def_arguments(base_def)
    for name in ("BASE_IMAGE", "TORCH_VERSION", "TORCH_CUDA"):
        assert arguments[name] == dockerfile_arg_default(base_dockerfile, name)
    # The default torch variant matches the default base image's CUDA (12.8 -> cu128).
    cuda = re.search(r"cuda:(\d+)\.(\d+)", arguments["BASE_IMAGE"])
    assert arguments["TORCH_CUDA"] == f"cu{cuda.group(1)}{cuda.group(2)}"
    text = base_def.read_text()
    assert "export HF_HUB_OFFLINE=1" in text and "export PATH=/opt/seqshard/bin:$PATH" in text
    assert "/opt/seqshard/bin:${PATH}" in base_dockerfile.read_text()
    for model, architectures in images.IMAGES.items():
        definition = (REPO / "containers" / model / f"{model}.def").read_text()
        dockerfile = (REPO / "containers" / model / "Dockerfile").read_text()
        assert f"io.seqshard.architecture {' '.join(architectures)}\n" in definition
        assert f'io.seqshard.architecture="{" ".join(architectures)}"' in dockerfile
        assert "export HF_HUB_OFFLINE=1" in definition
        assert definition.count("/opt/seqshard-checkpoint") >= 2 and "/opt/seqshard-checkpoint/" in dockerfile


# --- the image serves the model over HTTP (seqshard.images up / status / down) ----------------------------------


@pytest.mark.slow
def test_image_serves_health_and_predict_to_a_host_client(
    engine, built: images.BuildResult, demo_inputs: Path, host_embeddings: Path, tmp_path: Path, caplog
) -> None:
    """`seqshard.images up` starts the image's server with limits and the checkpoint read-only at /app/models; a
    client on the host gets /health and predictions equal to the host's `seqshard embed`; the image's own
    HEALTHCHECK passes; `status` reads the container's figures and logs alerts; `down` stops it with SIGTERM."""
    import logging

    import httpx
    from loopback import free_port

    from seqshard.client import SeqshardClient, predict_fasta

    name = "seqshard-test-serve"
    for stale in engine.containers.list(all=True, filters={"name": name}):
        stale.remove(force=True)
    port, metrics_port = free_port(), free_port()
    images.up(engine, "dnabert2", IMAGE, demo_inputs / "checkpoint", name=name, port=port, metrics_port=metrics_port,
              cpus=1.5, memory="3g")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        with SeqshardClient(url) as client:
            health = client.wait_until_healthy(timeout=300)
            assert health["model"] == "dnabert2"
            assert client.model_info()["settings"]["checkpoint"] == images.MODELS_MOUNT
            assert client.predict("ACGTAGGCTA")["dimension"] == 64
        predict_fasta(url, demo_inputs / "sample_b.fa.gz", tmp_path / "served.parquet")
        want, got = pq.read_table(host_embeddings), pq.read_table(tmp_path / "served.parquet")
        assert got.column("id").to_pylist() == want.column("id").to_pylist()
        np.testing.assert_allclose(
            np.stack(got.column("embedding").to_numpy(zero_copy_only=False)),
            np.stack(want.column("embedding").to_numpy(zero_copy_only=False)),
            rtol=0,
            atol=1e-5,
        )
        assert "seqshard_http_requests_total" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text

        host_config = engine.api.inspect_container(name)["HostConfig"]
        assert host_config["NanoCpus"] == 1_500_000_000 and host_config["Memory"] == 3 * 2**30
        mounts = {mount["Destination"]: mount for mount in engine.api.inspect_container(name)["Mounts"]}
        assert mounts[images.MODELS_MOUNT]["RW"] is False
        # podman 4.3's Docker API leaves the health check out of image inspection; its own CLI shows it.
        healthcheck = json.loads(run("podman", "image", "inspect", IMAGE).stdout)[0]["Healthcheck"]
        assert "seqshard.serve.healthcheck" in " ".join(healthcheck["Test"])
        # No systemd here to run health checks on a timer: run the image's HEALTHCHECK once, inside the container.
        checked = subprocess.run(["podman", "healthcheck", "run", name], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr

        with caplog.at_level(logging.WARNING, logger="seqshard.images"):
            status = images.container_status(engine, name, images.AlertThresholds(memory_percent=0.001))
        assert status.state == "running" and status.health == "healthy"
        assert status.memory_limit_bytes == 3 * 2**30 and 50e6 < status.memory_bytes < status.memory_limit_bytes
        assert status.cpu_percent >= 0 and status.disk_bytes >= 0
        assert [alert.split(":")[1].split()[0] for alert in status.alerts] == ["memory"]
        assert f"ALERT {name}: memory at" in caplog.text
    finally:
        images.down(engine, name)
    assert not engine.containers.list(all=True, filters={"name": name})
