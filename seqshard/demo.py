"""The demo's random-weight artefacts, in the published layouts, by name: what the workflow's demo rule writes.

The numbers they produce mean nothing; they let the whole workflow run offline, end to end, for every task.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def _dnabert2(out: Path) -> Path:
    from seqshard.models.dnabert2 import write_demo_checkpoint

    return write_demo_checkpoint(out)


def _dnabert2_promoter(out: Path) -> Path:
    from seqshard.models.dnabert2 import write_demo_checkpoint

    # The layout of a GUE prom_300 fine-tune: bert.* + bert.pooler.dense + classifier, id2label in config.json.
    return write_demo_checkpoint(out, labels=["non_promoter", "promoter"], seed=1)


def _lucaone(out: Path) -> Path:
    from seqshard.models.lucaone import write_demo_checkpoint

    return write_demo_checkpoint(out, layout="hf")


def _lucaone_location_head(out: Path) -> Path:
    from seqshard.engine.heads import write_demo_head

    return write_demo_head(out, hidden_size=64, labels=["cytoplasm", "membrane", "secreted"], seed=3)


def _esm2(out: Path) -> Path:
    from seqshard.models.esm2 import write_demo_checkpoint

    return write_demo_checkpoint(out)


def _nucleotide_transformer(out: Path) -> Path:
    from seqshard.models.nucleotide_transformer import write_demo_checkpoint

    return write_demo_checkpoint(out)


DEMOS: dict[str, Callable[[Path], Path]] = {
    "dnabert2-demo": _dnabert2,
    "dnabert2-promoter-demo": _dnabert2_promoter,
    "lucaone-demo": _lucaone,
    "lucaone-location-head-demo": _lucaone_location_head,
    "esm2-demo": _esm2,
    "nt-demo": _nucleotide_transformer,
}


def write_demo(name: str, out: Path | str) -> Path:
    """Write the demo artefact `name` (a key of DEMOS) into directory `out`."""
    if name not in DEMOS:
        raise ValueError(f"unknown demo {name!r}; known: {', '.join(DEMOS)}")
    return DEMOS[name](Path(out))
