"""Device and precision: a job given a GPU that cannot use it fails saying why, dtype by compute capability,
the fp16 overflow guard, the choice in figures and provenance, and shards of one run that disagree.

This machine has no GPU and a CPU-only torch, which is exactly the situation the first group of tests needs.
Compute capability is hardware we do not have: `seqshard.runtime.devices.compute_capability` is the one function that
reads it, and tests set it. Everything else runs for real (fp16 autocast runs on the CPU too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import seqshard.runtime.devices as devices
from seqshard.engine.chunks import score_records
from seqshard.engine.driver import run_tasks
from seqshard.engine.types import Hardware, RunFigures, RunFiles, TaskSettings, Work
from seqshard.io.fasta import read_valid_records
from seqshard.io.parquet import read_provenance
from seqshard.models.dnabert2 import load_dnabert2
from seqshard.runtime.devices import (
    MIN_DRIVER_FOR_CUDA,
    Precision,
    RunPrecisionMismatch,
    auto_dtype,
    check_run_precision,
    cuda_unavailable_reasons,
    resolve_device,
    resolve_dtype,
)

REPO = Path(__file__).resolve().parents[1]
NVIDIA_VERSION = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {}  Sat Aug 19 01:13:13 UTC 2023\nGCC version: 12\n"


@pytest.fixture(scope="module")
def checkpoint(dnabert2_demo_checkpoint: Path) -> Path:
    return dnabert2_demo_checkpoint


@pytest.fixture(scope="module")
def fasta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("fa") / "in.fa"
    path.write_text("".join(f">r{i}\n{''.join(rng.choice(list('ACGT'), n))}\n" for i, n in enumerate([80, 300, 41])))
    return path


# --- a job given a GPU that cannot use it ---------------------------------------------------------------------


def test_a_job_given_a_gpu_fails_with_the_reasons_found_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(RuntimeError) as error:
        resolve_device("auto", gpus=1)
    message = str(error.value)
    assert message.startswith("job was given 1 GPU(s), but torch sees no CUDA device: ")
    assert f"this torch ({torch.__version__}) is a CPU-only build" in message
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU" in message
    assert 'apptainer needs --nv: snakemake --apptainer-args "--nv"' in message  # no /dev/nvidia* here
    with pytest.raises(RuntimeError, match=r"^device 'cuda:1' was asked for, but torch sees no CUDA device"):
        resolve_device("cuda:1")


def test_without_a_gpu_request_the_device_is_the_cpu() -> None:
    assert resolve_device("auto", gpus=0) == "cpu"  # the workflow: no request, CPU, whatever is visible
    assert resolve_device("auto") == "cpu"  # the command line: CUDA only when torch sees it
    assert resolve_device("cpu", gpus=2) == "cpu"  # as configured, with a warning
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_driver_too_old_for_the_torch_build_and_other_causes(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidiactl").touch()
    (dev / "nvidia0").touch()
    version = tmp_path / "version"
    version.write_text(NVIDIA_VERSION.format("535.104.05"))
    reasons = cuda_unavailable_reasons({}, cuda_build="13.0", dev=dev, version_file=version)
    assert reasons == [
        f"the NVIDIA driver 535.104.05 is too old for this torch's CUDA 13.0 build, which needs driver >= "
        f"{MIN_DRIVER_FOR_CUDA[13]}: use a torch (or image) built for an older CUDA (cu128 needs >= 525.60.13) or "
        "update the driver"
    ]
    assert cuda_unavailable_reasons({}, cuda_build="12.8", dev=dev, version_file=version) == []
    version.write_text(NVIDIA_VERSION.format("580.82.07"))
    assert cuda_unavailable_reasons({}, cuda_build="13.0", dev=dev, version_file=version) == []
    hidden = cuda_unavailable_reasons({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, cuda_build="12.8", dev=dev)
    assert hidden == ["CUDA_VISIBLE_DEVICES='NoDevFiles' hides every GPU from this process (the scheduler or the "
                      "GPU pool gave it none)"]  # fmt: skip
    (dev / "nvidiactl").unlink()
    (dev / "nvidia0").unlink()
    assert "no NVIDIA device files" in cuda_unavailable_reasons({}, cuda_build="12.8", dev=dev)[0]


def test_cli_device_cuda_fails_in_one_line(checkpoint: Path, fasta: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "seqshard", "embed", str(fasta), "-o", str(out), "--checkpoint", str(checkpoint),
         "--device", "cuda"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "device 'cuda' was asked for, but torch sees no CUDA device: this torch" in lines[0]
    assert not out.exists()


@pytest.mark.workflow
def test_workflow_job_given_a_gpu_but_seeing_none_fails_with_the_reason(tmp_path: Path) -> None:
    """A real run: the local GPU pool hands the job device 0, and CPU-only torch cannot use it."""
    fasta = REPO / "resources" / "demo" / "sample_b.fa.gz"
    (tmp_path / "samples.tsv").write_text(f"sample\tfasta\tmolecule\ns\t{fasta}\tdna\n")
    config = {
        "samples": "samples.tsv",
        "models": {"dnabert2": {"architecture": "dnabert2", "checkpoint": "resources/checkpoints/dnabert2-demo"}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "SEQSHARD_GPUS": "0", "SEQSHARD_GPU_POOL": str(tmp_path / "pool")}
    command = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory", str(tmp_path),
        "--configfile", str(tmp_path / "config.yaml"), "--cores", "2", "results/s/dnabert2/embed.parquet",
        "--resources", "gpu=1", "--set-resources", "infer_shard:gpu=1",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode != 0
    logs = list((tmp_path / "logs" / "infer_shard").rglob("*.log"))
    assert logs, done.stderr[-3000:]
    text = logs[0].read_text()
    assert "job was given 1 GPU(s), but torch sees no CUDA device: this torch" in text, text[-3000:]
    assert "CPU-only build" in text and "using GPU(s) 0 from the pool" in text
    # Nothing computed on the CPU instead: no scores, no merged output.
    assert not list((tmp_path / "results" / "packs" / "dnabert2").glob("scores/**/*.parquet"))
    assert not (tmp_path / "results" / "s" / "dnabert2" / "embed.parquet").exists()


# --- dtype by compute capability ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [(None, "fp32"), ((9, 0), "bf16"), ((8, 9), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16"),
     ((6, 1), "fp32"), ((6, 0), "fp32")],
)  # fmt: skip
def test_auto_dtype_by_compute_capability(capability: tuple[int, int] | None, dtype: str) -> None:
    chosen, reason = auto_dtype(capability)
    assert chosen == dtype
    if capability is not None:
        assert f"compute capability {capability[0]}.{capability[1]}" in reason


def test_resolve_dtype_reads_the_capability_through_one_function(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def capability(device: str) -> tuple[int, int] | None:
        seen.append(device)
        return (7, 5)  # a T4

    monkeypatch.setattr(devices, "compute_capability", capability)
    assert resolve_dtype("auto", "cuda:0") == "fp16"
    assert seen == ["cuda:0"]
    assert resolve_dtype("bf16", "cuda:0") == "bf16"  # an explicit dtype is kept
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", "cpu")


def test_the_choice_is_in_figures_and_provenance(checkpoint: Path, fasta: Path, tmp_path: Path) -> None:
    figures = run_tasks(Work("dnabert2", checkpoint), RunFiles(fasta, {"embed": tmp_path / "a.parquet"},
                                                            figures=tmp_path / "a.json"))  # fmt: skip
    written = json.loads((tmp_path / "a.json").read_text())
    assert (written["device"], written["dtype"], written["dtype_reason"]) == ("cpu", "fp32", "CPU: fp32")
    assert written["compute_capability"] is None and written["n_fp32_reruns"] == 0
    assert figures.dtype == "fp32"
    provenance = read_provenance(tmp_path / "a.parquet")
    assert (provenance["dtype"], provenance["device_type"]) == ("fp32", "cpu")
    files = RunFiles(fasta, {"embed": tmp_path / "b.parquet"}, figures=tmp_path / "b.json")
    run_tasks(Work("dnabert2", checkpoint), files, Hardware(dtype="fp16"))
    assert json.loads((tmp_path / "b.json").read_text())["dtype_reason"] == "dtype fp16 as configured"
    assert read_provenance(tmp_path / "b.parquet")["dtype"] == "fp16"


# --- the fp16 overflow guard ---------------------------------------------------------------------------------


def overflowing_checkpoint(source: Path, out: Path) -> Path:
    """The demo checkpoint with one projection scaled so that its output passes fp16's 65,504 (not fp32's)."""
    out.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (out / name).write_bytes((source / name).read_bytes())
    state = torch.load(source / "pytorch_model.bin", weights_only=True)
    state["bert.encoder.layer.0.mlp.gated_layers.weight"] = state["bert.encoder.layer.0.mlp.gated_layers.weight"] * 1e6
    torch.save(state, out / "pytorch_model.bin")
    return out


def embeddings_in(checkpoint: Path, fasta: Path) -> dict[str, tuple[np.ndarray, RunFigures]]:
    """Embeddings of `fasta` and the run's figures, in fp32 and in fp16 autocast (on the CPU)."""
    loaded = load_dnabert2(str(checkpoint))
    records, _ = read_valid_records(fasta, "dna")
    results = {}
    for dtype in ("fp32", "fp16"):
        figures = RunFigures({}, "cpu", dtype, 1, 16384)
        scored = score_records(loaded, records, TaskSettings(), molecule="dna", batch_tokens=16384,
                               dtype=dtype, figures=figures)  # fmt: skip
        results[dtype] = (np.array(scored.columns["embed"]["embedding"].to_pylist()), figures)
    return results


def test_fp16_overflow_reruns_the_batch_in_fp32(checkpoint: Path, fasta: Path, tmp_path: Path) -> None:
    overflowing = overflowing_checkpoint(checkpoint, tmp_path / "overflow")
    results = embeddings_in(overflowing, fasta)
    loaded = load_dnabert2(str(overflowing))
    records, _ = read_valid_records(fasta, "dna")
    # Without the guard the fp16 rows would be NaN; with it, the batch is the fp32 batch.
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.float16):
        ids = torch.tensor([loaded.tokenizer.encode(records[0].sequence)])
        assert not torch.isfinite(loaded.model(ids, torch.ones_like(ids, dtype=torch.bool))).all()
    fp32, fp16 = results["fp32"], results["fp16"]
    assert fp16[1].n_fp32_reruns == fp16[1].n_batches >= 1 and fp32[1].n_fp32_reruns == 0
    assert np.isfinite(fp16[0]).all()
    np.testing.assert_array_equal(fp16[0], fp32[0])


def test_fp16_without_overflow_runs_in_fp16(checkpoint: Path, fasta: Path) -> None:
    results = embeddings_in(checkpoint, fasta)
    (fp32, fp32_figures), (fp16, fp16_figures) = results["fp32"], results["fp16"]
    assert fp32_figures.n_fp32_reruns == fp16_figures.n_fp32_reruns == 0
    assert not np.array_equal(fp16, fp32)  # really computed in fp16
    np.testing.assert_allclose(fp16, fp32, atol=2e-2, rtol=0)


# --- shards of one run that disagree ---------------------------------------------------------------------------


def run_shard(fasta: Path, out: Path, checkpoint: Path, figures: Path, settings: TaskSettings | None = None) -> None:
    """As the workflow's inference job runs a shard: precision resolved, siblings checked, then the run."""
    work, hardware = Work("dnabert2", checkpoint, (settings or TaskSettings(),)), Hardware().resolved()
    check_run_precision(figures, hardware.precision, work.run_key(hardware.dtype))
    run_tasks(work, RunFiles(fasta, {"embed": out}, figures=figures), hardware)


def test_a_sibling_shard_on_other_hardware_stops_the_job_at_its_start(
    checkpoint: Path, fasta: Path, tmp_path: Path
) -> None:
    figures_dir = tmp_path / "figures"
    figures_dir.mkdir()
    run_shard(fasta, tmp_path / "0.parquet", checkpoint, figures_dir / "0.json")
    key = json.loads((figures_dir / "0.json").read_text())["run_key"]
    # Shard 1 of the same run, as a GPU job records it (written here: there is no GPU to run it on).
    gpu = {"status": "complete", "run_key": key, "device": "cuda", "dtype": "bf16", "device_name": "NVIDIA A100"}
    (figures_dir / "1.json").write_text(json.dumps(gpu))
    # Figures of another run (other settings) in the same folder do not count.
    (figures_dir / "9.json").write_text(json.dumps({**gpu, "run_key": "another-run"}))
    with pytest.raises(RunPrecisionMismatch) as error:
        run_shard(fasta, tmp_path / "2.parquet", checkpoint, figures_dir / "2.json")
    message = str(error.value)
    assert message.startswith("2.json: this job resolved cpu/fp32 (cpu; CPU: fp32) but shards of the same run ran "
                              "as 1.json (cuda/bf16 on NVIDIA A100)")  # fmt: skip
    assert "9.json" not in message and "set the model's dtype" in message
    assert not (tmp_path / "2.parquet").exists() and not (figures_dir / "2.json").exists()
    # Another pooling is another run: no conflict.
    run_shard(fasta, tmp_path / "3.parquet", checkpoint, figures_dir / "3.json", TaskSettings(pooling="max"))


def test_a_job_claims_its_place_before_loading_the_model(tmp_path: Path) -> None:
    """The figures file is written at the start, so a sibling starting at the same moment sees this job."""
    precision = Precision("cpu", "fp32", "CPU: fp32")
    check_run_precision(tmp_path / "5.json", precision, "k")
    claim = json.loads((tmp_path / "5.json").read_text())
    assert claim["status"] == "running" and claim["run_key"] == "k" and claim["dtype"] == "fp32"
    with pytest.raises(RunPrecisionMismatch, match=r"resolved cuda/fp16 .* ran as 5\.json \(cpu/fp32 on cpu\)"):
        check_run_precision(tmp_path / "6.json", Precision("cuda", "fp16", "T4", "7.5", "Tesla T4"), "k")
