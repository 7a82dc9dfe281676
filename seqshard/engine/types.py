"""The engine's shared types, importable without torch: the tasks and the forward passes they share, the settings
that shape a task's numbers, the three objects a run is described by (`Work`: what to compute; `RunFiles`: where
its input and outputs are; `Hardware`: what it runs on), and the figures a run measures (`RunFigures`).

The workflow's DAG is planned from these names (tasks, passes, settings) on login nodes and in dry runs, where
loading torch would cost seconds for nothing; nothing here imports it.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from seqshard.io.sequences import DEFAULT_POLICY, InputPolicy
from seqshard.io.variants import STRANDS, VariantSettings
from seqshard.runtime.monitoring import usable_cpus

if TYPE_CHECKING:
    from seqshard.runtime.devices import Precision
    from seqshard.runtime.storage import WarmUp

TASKS = ("embed", "mlm_score", "classify", "regress")
# Tasks by forward pass: embed, classify and regress read the last hidden state of the unmasked input and share one
# pass; mlm_score needs masked inputs and runs its own.
PASSES: dict[str, tuple[str, ...]] = {"hidden": ("embed", "classify", "regress"), "mlm": ("mlm_score",)}
# Settings that decide the model inputs (every task depends on them), and the other settings each task's numbers
# depend on: pooling means nothing to mlm_score, so changing it must not rerun or invalidate mlm_score results.
INPUT_SETTINGS = ("long_sequences", "window_length", "window_overlap", "max_tokens")
TASK_SETTINGS = {
    "embed": ("pooling", "per_token", "per_base", "layers", "strand"),
    "classify": ("head",),
    "regress": ("head",),
    "mlm_score": (),
}
# Variant effects (seqshard.engine.variants): scores of variants against their reference windows or wild types, run
# on variant sets (a VCF + reference, or mutations + protein FASTA) rather than on sequences, with its own passes.
VARIANT_TASK = "variant_effect"
POOLINGS = ("mean", "cls", "max")
LONG_SEQUENCE_MODES = ("truncate", "window")
# `strand` (both | forward, seqshard.io.variants.STRANDS) is one setting with a default per task: embeddings read
# the sequence as given unless asked, variant effects score both strands unless asked (a config's null).
DEFAULT_STRANDS = {"embed": "forward", VARIANT_TASK: "both"}
# Records per chunk on the CPU (see seqshard.engine.driver.chunk_limits).
CHUNK_RECORDS = 4096
# Windowed records per run re-embedded with other windows to measure the seams (seqshard.engine.seams).
SEAM_SAMPLE = 4


def pass_of(task: str) -> str:
    """The forward pass (`hidden` or `mlm`) that computes `task`."""
    return next(name for name, tasks in PASSES.items() if task in tasks)


@dataclass(frozen=True)
class TaskSettings:
    """What to compute and how sequences are fitted to the model; these settings shape the numbers."""

    task: str = "embed"
    pooling: str = "mean"
    per_token: bool = False
    long_sequences: str = "window"  # or "truncate"
    window_length: int | None = None  # residues; None: the model's default
    window_overlap: int | None = None  # residues; None: a quarter of the window
    max_tokens: int | None = None  # None: the checkpoint's limit
    head: str | None = None  # classify/regress: a linear head directory (seqshard.engine.heads); None: the checkpoint's
    # embed only: one vector per residue too (a nucleotide's token's), the hidden states of these layers (fair-esm's
    # numbering, seqshard.models.layer_numbers; None: the last layer, in the `embedding` column), and `both`
    # strands (DNA: the sequence and its reverse complement, averaged) or the `forward` one as given.
    per_base: bool = False
    layers: tuple[int, ...] | None = None
    strand: str = DEFAULT_STRANDS["embed"]

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {POOLINGS}")
        if self.strand not in STRANDS:
            raise ValueError(f"unknown strand {self.strand!r}; expected one of {STRANDS}")
        if self.layers is not None:
            layers = tuple(self.layers)
            if not layers or not all(isinstance(layer, int) and not isinstance(layer, bool) for layer in layers):
                raise ValueError(f"layers must be a non-empty list of layer numbers, got {self.layers!r}")
            if len(set(layers)) != len(layers):
                raise ValueError(f"layers {list(layers)} name a layer twice; give each once")
            object.__setattr__(self, "layers", layers)
        if self.strand == "both" and (self.per_token or self.per_base) and self.long_sequences == "truncate":
            raise ValueError(
                "per-token outputs of both strands need long_sequences: window (a truncated reverse strand keeps "
                "other residues than the forward one)"
            )

    def relevant(self) -> dict[str, object]:
        """The settings this task's numbers depend on."""
        return {name: getattr(self, name) for name in ("task", *INPUT_SETTINGS, *TASK_SETTINGS[self.task])}

    def molecule_problem(self, molecule: str) -> str | None:
        """Why these settings cannot run on `molecule`'s sequences (None when they can): both strands and one
        vector per base are for nucleotides, strands for DNA only."""
        if self.task != "embed":
            return None
        if self.strand == "both" and molecule != "dna":
            return f"strand: both reads DNA's reverse complement; {molecule} sequences have one strand (use forward)"
        if self.per_base and molecule == "protein":
            return "per_base is for DNA and RNA; for proteins per_token already has one vector per residue"
        return None


@dataclass(frozen=True)
class Work:
    """What to compute: a model, the tasks that share its passes, the input's molecule and how it is checked.

    `provenance` adds keys to every output's Parquet provenance (the workflow names the model entry there).
    `seam_sample`: windowed records re-embedded with other windows to measure what the seams cost
    (seqshard.engine.seams; figures only, no output changes); 0 measures nothing.
    """

    architecture: str
    checkpoint: str
    tasks: tuple[TaskSettings, ...] = (TaskSettings(),)
    molecule: str = "dna"
    policy: InputPolicy = DEFAULT_POLICY
    dedupe: bool = True  # compute a repeated sequence once
    provenance: Mapping[str, object] = field(default_factory=dict)
    seam_sample: int = SEAM_SAMPLE

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "checkpoint", str(self.checkpoint))
        if not self.tasks:
            raise ValueError("no task to run")
        if self.seam_sample < 0:
            raise ValueError(f"seam_sample must be 0 or more records, got {self.seam_sample}")

    def by_task(self) -> dict[str, TaskSettings]:
        return {settings.task: settings for settings in self.tasks}

    def run_key(self, dtype: str) -> str:
        """A short digest of what shapes the run's numbers (with the configured `dtype`): the shards of one run
        share it, so a job can find its siblings' figures (seqshard.runtime.devices.check_run_precision)."""
        settings = {"architecture": self.architecture, "checkpoint": self.checkpoint, "dtype": dtype,
                    "tasks": [asdict(s) for s in self.tasks]}  # fmt: skip
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VariantWork:
    """What a variant run computes: a model and how variants are placed and scored (`settings`). `provenance` adds
    keys to the output's provenance (the workflow names the model entry there)."""

    architecture: str
    checkpoint: str
    settings: VariantSettings = field(default_factory=VariantSettings)
    policy: InputPolicy = DEFAULT_POLICY
    provenance: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", str(self.checkpoint))
        if self.settings.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.settings.pooling!r}; expected one of {POOLINGS}")

    def run_key(self, dtype: str) -> str:
        """As `Work.run_key`: the digest the shards of one run share."""
        settings = {"architecture": self.architecture, "checkpoint": self.checkpoint, "dtype": dtype,
                    "task": VARIANT_TASK, "settings": asdict(self.settings)}  # fmt: skip
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunFiles:
    """Where a run's input is and its outputs go.

    `outputs` maps each task to its Parquet file. `packed`: the input is a shard `seqshard.plan.packing` wrote
    (validated already, distinct sequences). `labels` name the job in its figures (the resource report reads them);
    `warmup` is what the caller did to bring the files onto local disk (seqshard.runtime.storage.warm_up), for the
    figures.
    """

    fasta: Path
    outputs: Mapping[str, Path]
    rejects: Path | None = None
    figures: Path | None = None
    packed: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    warmup: WarmUp | None = None


@dataclass(frozen=True)
class Hardware:
    """What a run computes on and in (none of it but `dtype` changes the numbers).

    `gpus`: the GPUs the job was given (the workflow's `gpu` resource), None when nobody said (the command line).
    `precision`, once resolved (`resolved`), is the device and dtype these settings came to on this machine.
    """

    device: str = "auto"
    dtype: str = "auto"
    gpus: int | None = None
    threads: int = 1
    batch_tokens: int = 16384
    chunk_records: int = CHUNK_RECORDS
    precision: Precision | None = None

    def resolved(self) -> Hardware:
        """These settings with `precision` resolved (seqshard.runtime.devices.resolve_precision; loads torch)."""
        if self.precision is not None:
            return self
        from dataclasses import replace

        from seqshard.runtime.devices import resolve_precision

        return replace(self, precision=resolve_precision(self.device, self.dtype, self.gpus))


@dataclass
class RunFigures:
    """What one run measured; written next to the output as JSON for the resource report."""

    labels: dict[str, str]
    device: str
    dtype: str
    threads: int
    batch_tokens: int
    n_records: int = 0  # rows written (each record once, duplicates included)
    n_sequences: int = 0  # distinct sequences scored (a duplicate is scored once)
    n_duplicates: int = 0  # records whose sequence an earlier record already had
    n_cached: int = 0  # distinct sequences whose results came from the result cache
    n_rejected: int = 0  # records that could not be scored (e.g. too large for the GPU even alone)
    n_tokens: int = 0
    n_computed_tokens: int = 0
    n_batches: int = 0
    n_windows: int = 0
    n_windowed: int = 0  # distinct sequences cut into more than one window
    n_truncated: int = 0
    n_oom_splits: int = 0  # batches halved after a GPU out-of-memory
    n_budget_changes: int = 0  # times the token budget was lowered after an out-of-memory, or raised back
    n_fp32_reruns: int = 0  # fp16 batches whose output overflowed (inf/NaN), computed again in fp32
    batch_shapes: set[tuple[int, int]] = field(default_factory=set)  # distinct (rows, width) run
    warmup_seconds: float = 0.0  # bringing the shard and checkpoint onto local disk (seqshard.runtime.storage)
    load_seconds: float = 0.0
    compute_seconds: float = 0.0  # in batches: forward passes and the task's reductions
    run_seconds: float = 0.0  # reading the file to closing the output, model load excluded
    peak_gpu_memory_bytes: int | None = None
    extra: dict[str, object] = field(default_factory=dict)
    # When and where the run happened, and its GPU's telemetry (seqshard.runtime.monitoring), for the resource report.
    host: str = field(default_factory=socket.gethostname)
    cpu_count: int = field(default_factory=usable_cpus)
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    gpu: dict[str, object] | None = None

    def as_dict(self) -> dict[str, object]:
        compute = self.compute_seconds
        return {
            **self.labels,
            "device": self.device,
            "dtype": self.dtype,
            "threads": self.threads,
            "batch_tokens": self.batch_tokens,
            "n_records": self.n_records,
            "n_sequences": self.n_sequences,
            "n_duplicates": self.n_duplicates,
            "n_cached": self.n_cached,
            "n_rejected": self.n_rejected,
            "n_tokens": self.n_tokens,
            "n_computed_tokens": self.n_computed_tokens,
            "useful_token_fraction": self.n_tokens / self.n_computed_tokens if self.n_computed_tokens else None,
            "n_batches": self.n_batches,
            "n_batch_shapes": len(self.batch_shapes),
            "n_windows": self.n_windows,
            "n_windowed": self.n_windowed,
            "n_truncated": self.n_truncated,
            "n_oom_splits": self.n_oom_splits,
            "n_budget_changes": self.n_budget_changes,
            "n_fp32_reruns": self.n_fp32_reruns,
            "warmup_seconds": round(self.warmup_seconds, 4),
            "load_seconds": round(self.load_seconds, 4),
            "compute_seconds": round(compute, 4),
            "run_seconds": round(self.run_seconds, 4),
            "sequences_per_second": round(self.n_sequences / compute, 3) if compute else None,
            "tokens_per_second": round(self.n_tokens / compute, 1) if compute else None,
            "peak_gpu_memory_bytes": self.peak_gpu_memory_bytes,
            "host": self.host,
            "cpu_count": self.cpu_count,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "gpu": self.gpu,
            **self.extra,
        }
