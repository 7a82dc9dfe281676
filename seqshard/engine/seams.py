"""What cutting long sequences into windows costs, measured by the run itself: a few of its windowed records are
embedded again with the seams moved, and the cosine distance between their pooled embeddings says how much the
answer depends on where the windows were cut.

A record of L residues in windows of W residues overlapping by O has about L / (W - O) seams; the tokens near each
seam come from windows that saw only part of their context. The probe embeds up to `Work.seam_sample` windowed
records (each cut to its first SEAM_PROBE_WINDOWS windows' worth of residues, so a chromosome-sized record costs no
more than a few windows) three times: with the run's fit, with the overlap changed (halved; from none, to a quarter
of the window), and with the window length changed (three quarters of it, the overlap scaled alike). Every residue
still belongs to one window in each, so a distance of 0 would mean the seams do not matter; what it is says what a
window length or overlap costs in faithfulness, beside what it costs in compute (tokens per record: `n_windows`).
Mean pooling of the last hidden state, forward strand: the pooled embedding whatever the run's own settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from seqshard.engine.runner import Runner
from seqshard.engine.tasks import PassTask, score_encoded
from seqshard.engine.types import RunFigures, TaskSettings
from seqshard.engine.windows import ModelFit

log = logging.getLogger(__name__)

SEAM_PROBE_WINDOWS = 16  # at most this many window lengths of each sampled record are probed


def changed_fits(fit: ModelFit) -> dict[str, ModelFit]:
    """The fits the probe compares the run's with: `overlap` (the overlap halved, or a quarter of the window when
    there was none to halve) and `length` (three quarters of the window, the overlap scaled alike)."""
    window, overlap = fit.window_length, fit.window_overlap
    changed = {"overlap": replace(fit, window_overlap=overlap // 2 if overlap > 1 else window // 4)}
    shorter = 3 * window // 4
    if shorter >= 2:
        changed["length"] = replace(fit, window_length=shorter, window_overlap=overlap * shorter // window)
    return {name: other for name, other in changed.items() if other.window_overlap < other.window_length}


def _pooled(runner: Runner, sequences: Sequence[str], fit: ModelFit) -> tuple[np.ndarray, set[int]]:
    """Mean-pooled last hidden states of `sequences` under `fit`, and the ones that could not be run."""
    chunk = replace(fit, spans=False, reverse=False).encode(sequences, runner.loaded.tokenizer)
    columns, failed = score_encoded(runner, chunk, [PassTask(TaskSettings())])
    vectors = columns["embed"]["embedding"].flatten().to_numpy(zero_copy_only=False)  # type: ignore[union-attr]
    return vectors.reshape(len(sequences), -1).astype(np.float64), set(failed)


def _cosine_distance(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
    return 1.0 - (first * second).sum(axis=1) / np.where(norms > 0, norms, 1.0)


def measure_seams(
    runner: Runner, sequences: Sequence[str], fit: ModelFit, max_windows: int | None = SEAM_PROBE_WINDOWS
) -> dict[str, object]:
    """The seam figures of a run (keys `seam_*`) from its sampled windowed `sequences`: how many were probed, the
    residues probed, each changed fit's window and overlap, and the cosine distances' mean and max. Empty when
    nothing was sampled or the run does not window. Its compute is kept out of the run's throughput figures (it
    runs on a runner of its own) and timed as `seam_seconds`. Each sequence is cut to its first `max_windows`
    window lengths (None: probed whole, as benchmarks/bench_seams.py does for a long real sequence)."""
    if not sequences or fit.long_sequences != "window":
        return {}
    started = time.perf_counter()
    own = runner.figures
    runner = Runner(
        runner.loaded, RunFigures({}, own.device, own.dtype, own.threads, own.batch_tokens),
        batch_tokens=runner.max_batch_tokens, dtype=runner.dtype,
    )  # fmt: skip
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be 1 or more window lengths (or None: whole), got {max_windows}")
    limit = None if max_windows is None else max_windows * fit.window_length
    probed = [sequence[:limit] for sequence in sequences]
    baseline, failed = _pooled(runner, probed, fit)
    figures: dict[str, object] = {
        "seam_records": len(probed),
        "seam_residues": sum(len(sequence) for sequence in probed),
        "seam_window_length": fit.window_length,
        "seam_window_overlap": fit.window_overlap,
    }
    for name, other in changed_fits(fit).items():
        vectors, other_failed = _pooled(runner, probed, other)
        kept = [i for i in range(len(probed)) if i not in failed | other_failed]
        distances = _cosine_distance(baseline[kept], vectors[kept])
        figures[f"seam_{name}_window_length"] = other.window_length
        figures[f"seam_{name}_window_overlap"] = other.window_overlap
        figures[f"seam_{name}_cosine_mean"] = float(distances.mean()) if len(kept) else None
        figures[f"seam_{name}_cosine_max"] = float(distances.max()) if len(kept) else None
    figures["seam_seconds"] = round(time.perf_counter() - started, 4)
    log.info(
        "seams: %d windowed record(s) (%d residues) embedded again with other windows: cosine distance %s",
        len(probed), figures["seam_residues"], "; ".join(
            f"{name} {fit.window_length}/{fit.window_overlap} -> {figures[f'seam_{name}_window_length']}/"
            f"{figures[f'seam_{name}_window_overlap']}: mean {figures[f'seam_{name}_cosine_mean']:.3g}, max "
            f"{figures[f'seam_{name}_cosine_max']:.3g}"
            for name in changed_fits(fit) if figures.get(f"seam_{name}_cosine_mean") is not None
        ),
    )  # fmt: skip
    return figures
