"""Pack a model entry's variant sets into shards of distinct scoring units, and merge the scored shards back into
one `variant_effect` file per variant set (the variant counterpart of `packing` and `merge`).

`pack_variant_sets` reads every set (a VCF against its reference, or mutations against a protein FASTA), gives each
distinct unit (`seqshard.io.variants.DnaUnit` / `ProteinUnit`: what a variant's scores depend on) one row in order of
first appearance, and cuts the units of each kind into contiguous shards of at most `max_units`. Shards are cut only
where the reference window (DNA) or the wild-type protein changes, up to twice that size, so units that share
windows or masked positions (the ALTs of one site, the mutants of one protein) are scored in one job, which computes
each shared window or masked position once. A map per set says, for each accepted variant in input order, how its
row is named and where its unit sits (shard, row); its rejects go to its own table with their reasons. A unit
repeated within or across sets (the same variant in several sample VCFs on one reference) is scored once.

`merge_variant_sets` streams each set's map, takes the scored rows of its units (through a small cache of decoded
row groups) and writes the set's file in input order; units the model could not score become rejects (`skip`) or an
error naming the variant (`error`). Rows + rejects = the set's variants, which is checked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqshard.io.parquet import VARIANT_FIELDS, TableWriter, provenance_metadata, variant_schema
from seqshard.io.sequences import InputPolicy
from seqshard.io.variants import (
    DnaUnit,
    ProteinUnit,
    Unit,
    VariantReject,
    VariantRow,
    VariantSettings,
    read_mutations,
    read_variant_rejects,
    read_vcf,
    write_variant_rejects,
)
from seqshard.plan.merge import RowGroupCache
from seqshard.plan.sharding import shard_name

log = logging.getLogger(__name__)

KINDS = {"vcf": "dna", "mutations": "protein"}  # the input kind of a set -> the kind (and molecule) of its units
UNIT_SCHEMAS = {
    "dna": pa.schema([pa.field(name, pa.string(), nullable=False) for name in ("left", "ref", "alt", "right")]),
    "protein": pa.schema(
        [
            pa.field("sequence", pa.string(), nullable=False),
            pa.field("positions", pa.list_(pa.int32()), nullable=False),  # 0-based
            pa.field("wild_type", pa.string(), nullable=False),
            pa.field("mutant", pa.string(), nullable=False),
        ]
    ),
}
MANIFEST_HEADER = "shard\tkind\tn_units\n"
SETS_HEADER = "sample\tkind\tvariants\tsequences\tn_variants\tn_accepted\tn_rejected\n"
MAP_ROWS = 65536  # map rows buffered before they are written


class VariantSetErrors(ValueError):
    """One or more variant sets hold variants that cannot be scored (with `on_invalid: error`); one line per set."""


@dataclass(frozen=True)
class VariantSetInput:
    """A variant set: `kind` `vcf` (a VCF/BCF `variants` against the reference FASTA `sequences`) or `mutations`
    (a mutation table `variants` against the protein FASTA `sequences`)."""

    name: str
    kind: str
    variants: str
    sequences: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown variant set kind {self.kind!r}; expected one of {sorted(KINDS)}")

    @property
    def unit_kind(self) -> str:
        return KINDS[self.kind]


@dataclass(frozen=True)
class VariantShard:
    name: str
    kind: str  # dna or protein: the molecule its units are scored as
    n_units: int


@dataclass
class VariantPackSummary:
    shards: list[VariantShard] = field(default_factory=list)
    n_variants: int = 0
    n_accepted: int = 0
    n_units: int = 0


def read_variant_set(entry: VariantSetInput, settings: VariantSettings, policy: InputPolicy) -> Iterator[VariantRow]:
    """The set's variants in input order, each with its unit or the reason it has none."""
    if entry.kind == "vcf":
        return read_vcf(entry.variants, entry.sequences, settings, policy.allowed_ambiguity)
    return read_mutations(entry.variants, entry.sequences, policy)


def group_key(unit: Unit) -> str:
    """Units with the same key share model inputs: the REF window of a DNA unit, the wild type of a protein."""
    if isinstance(unit, DnaUnit):
        return f"{unit.left}\0{unit.ref}\0{unit.right}"
    return unit.sequence


def unit_groups(units: Sequence[Unit], size: int) -> Iterator[tuple[int, int]]:
    """[start, stop) runs of about `size` units, cut where the group key changes (at most 2 x size per run)."""
    start = 0
    for index in range(1, len(units) + 1):
        last = index == len(units)
        full = index - start >= size and (last or group_key(units[index]) != group_key(units[index - 1]))
        if last or full or index - start >= 2 * size:
            yield start, index
            start = index


class _ShardWriter:
    """Writes one kind's units into consecutive shard files, cutting where the group changes once a shard is full."""

    def __init__(self, kind: str, directory: Path, max_units: int, summary: VariantPackSummary) -> None:
        self.kind, self.directory, self.max_units, self.summary = kind, directory, max_units, summary
        self.rows: list[Unit] = []
        self.name: str | None = None
        self.count = 0
        self.index = -1
        self._writer: pq.ParquetWriter | None = None
        self._last_key: str | None = None

    def add(self, unit: Unit) -> tuple[str, int]:
        key = group_key(unit)
        cut = self.count >= self.max_units and key != self._last_key
        if self.name is None or cut or self.count >= 2 * self.max_units:
            self.close()
            self.index = len(self.summary.shards)
            self.name = shard_name(self.index)
            self.summary.shards.append(VariantShard(self.name, self.kind, 0))
            self._writer = pq.ParquetWriter(
                self.directory / f"{self.name}.parquet", UNIT_SCHEMAS[self.kind], compression="zstd"
            )
            self.count = 0
        self._last_key = key
        self.rows.append(unit)
        self.count += 1
        if len(self.rows) >= 4096:
            self._flush()
        return self.name, self.count - 1

    def _flush(self) -> None:
        if self.rows and self._writer is not None:
            self._writer.write_table(units_table(self.kind, self.rows))
            self.rows = []

    def close(self) -> None:
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        self._writer = None
        self.summary.shards[self.index] = VariantShard(self.name or "", self.kind, self.count)


def units_table(kind: str, units: Sequence[Unit]) -> pa.Table:
    if kind == "dna":
        columns: dict[str, list[object]] = {
            name: [getattr(u, name) for u in units] for name in UNIT_SCHEMAS["dna"].names
        }
    else:
        columns = {
            "sequence": [u.sequence for u in units],  # type: ignore[union-attr]
            "positions": [list(u.positions) for u in units],  # type: ignore[union-attr]
            "wild_type": [u.wild_type for u in units],  # type: ignore[union-attr]
            "mutant": [u.mutant for u in units],  # type: ignore[union-attr]
        }
    return pa.table(columns, schema=UNIT_SCHEMAS[kind])


def read_shard_units(path: Path | str) -> tuple[str, list[Unit]]:
    """(kind, units) of a shard `pack_variant_sets` wrote, all at once."""
    units: list[Unit] = []
    kinds = ["dna"]
    for kind, chunk in iter_unit_chunks(path, 2**62):
        kinds.append(kind)
        units.extend(chunk)
    return kinds[-1], units


def iter_unit_chunks(path: Path | str, size: int) -> Iterator[tuple[str, list[Unit]]]:
    """(kind, units) of a shard in consecutive chunks of about `size` units, cut only where the group key changes
    (at most 2 x size), read a row group at a time: memory stays at a chunk whatever the shard's size."""
    shard = pq.ParquetFile(path)
    names = shard.schema_arrow.names
    kind = next((k for k, schema in UNIT_SCHEMAS.items() if schema.names == names), None)
    if kind is None:
        raise ValueError(f"{path}: not a variant shard (columns {names})")
    pending: list[Unit] = []
    for group in range(shard.num_row_groups):
        pending.extend(_units(kind, shard.read_row_group(group)))
        cut = 0
        for start, stop in unit_groups(pending, size):
            if stop == len(pending):  # the last run may continue in the next row group
                break
            yield kind, pending[start:stop]
            cut = stop
        pending = pending[cut:]
    for start, stop in unit_groups(pending, size):
        yield kind, pending[start:stop]


def _units(kind: str, table: pa.Table) -> list[Unit]:
    if kind == "dna":
        columns = [table.column(name).to_pylist() for name in UNIT_SCHEMAS["dna"].names]
        return [DnaUnit(*values) for values in zip(*columns, strict=True)]
    sequences, positions, wild, mutant = (table.column(name).to_pylist() for name in UNIT_SCHEMAS["protein"].names)
    return [ProteinUnit(s, tuple(p), w, m) for s, p, w, m in zip(sequences, positions, wild, mutant, strict=True)]


def _map_schema(kind: str) -> pa.Schema:
    return pa.schema(
        [
            *VARIANT_FIELDS[kind],
            pa.field("shard", pa.string(), nullable=False),
            pa.field("row", pa.int64(), nullable=False),
        ]
    )


def pack_variant_sets(
    sets: Sequence[VariantSetInput],
    out_dir: Path | str,
    settings: VariantSettings,
    policy: InputPolicy,
    max_units: int = 50000,
) -> VariantPackSummary:
    """Read every set, write the distinct units as shards, and per set its map and rejects.

    `out_dir` receives `shards/<name>.parquet` (units), `manifest.tsv` (shard, kind, units), `sets.tsv` (per set:
    variants, accepted, rejected), `maps/<set>.parquet` (accepted variants in input order: their naming columns,
    shard and row) and `maps/<set>.rejects.tsv`. With `on_invalid="error"`, a set with a variant that cannot be
    scored is an error naming its first (every set is read first, so one error names them all).
    """
    if max_units < 1:
        raise ValueError(f"max_variants per shard must be positive, got {max_units}")
    out_dir = Path(out_dir)
    for sub in ("shards", "maps"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    summary = VariantPackSummary()
    writers = {kind: _ShardWriter(kind, out_dir / "shards", max_units, summary) for kind in UNIT_SCHEMAS}
    seen: dict[bytes, tuple[str, int]] = {}
    problems: list[str] = []
    lines = [SETS_HEADER]
    try:
        for entry in sets:
            rejects, accepted = _pack_set(entry, out_dir, settings, policy, (writers, seen))
            n_variants = accepted + len(rejects)
            summary.n_variants += n_variants
            summary.n_accepted += accepted
            lines.append(
                f"{entry.name}\t{entry.kind}\t{entry.variants}\t{entry.sequences}\t{n_variants}\t{accepted}\t"
                f"{len(rejects)}\n"
            )
            if rejects and policy.on_invalid == "error":
                problems.append(
                    f"set {entry.name}: {len(rejects)} of {n_variants} variant(s) cannot be scored; the first: "
                    f"{rejects[0].describe()}. Fix the input, or set {policy.interface.setting('on_invalid', 'skip')} "
                    "to list them in a rejects table"
                )
            elif rejects:
                log.warning(
                    "set %s: %d of %d variant(s) cannot be scored (listed with their reasons in its rejects table); "
                    "the first: %s",
                    entry.name,
                    len(rejects),
                    n_variants,
                    rejects[0].describe(),
                )
    finally:
        for writer in writers.values():
            writer.close()
    summary.n_units = len(seen)
    with open(out_dir / "manifest.tsv", "w", encoding="utf-8") as handle:
        handle.write(MANIFEST_HEADER)
        for shard in summary.shards:
            handle.write(f"{shard.name}\t{shard.kind}\t{shard.n_units}\n")
    (out_dir / "sets.tsv").write_text("".join(lines), encoding="utf-8")
    if problems:
        raise VariantSetErrors("\n".join(problems))
    log.info(
        "%d variant set(s): %d variants, %d accepted, %d distinct units to score, %d shard(s)",
        len(sets),
        summary.n_variants,
        summary.n_accepted,
        summary.n_units,
        len(summary.shards),
    )
    return summary


def _pack_set(
    entry: VariantSetInput,
    out_dir: Path,
    settings: VariantSettings,
    policy: InputPolicy,
    units: tuple[dict[str, _ShardWriter], dict[bytes, tuple[str, int]]],
) -> tuple[list[VariantReject], int]:
    """One set into the shared shards: its map and rejects written; returns its rejects and accepted count."""
    writers, seen = units
    kind = entry.unit_kind
    schema = _map_schema(kind)
    columns: dict[str, list[object]] = {name: [] for name in schema.names}
    rejects: list[VariantReject] = []
    accepted = 0
    with pq.ParquetWriter(out_dir / "maps" / f"{entry.name}.parquet", schema, compression="zstd") as map_writer:
        for row in read_variant_set(entry, settings, policy):
            if row.unit is None:
                assert row.reason is not None
                rejects.append(VariantReject(entry.variants, row.record, row.label, row.reason))
                continue
            digest = row.unit.digest()
            where = seen.get(digest)
            if where is None:
                where = seen[digest] = writers[kind].add(row.unit)
            for name in VARIANT_FIELDS[kind]:
                columns[name.name].append(row.fields[name.name])
            columns["shard"].append(where[0])
            columns["row"].append(where[1])
            accepted += 1
            if len(columns["shard"]) >= MAP_ROWS:
                map_writer.write_table(pa.table(columns, schema=schema))
                columns = {name: [] for name in schema.names}
        map_writer.write_table(pa.table(columns, schema=schema))
    write_variant_rejects(rejects, out_dir / "maps" / f"{entry.name}.rejects.tsv")
    return rejects, accepted


def read_variant_manifest(path: Path | str) -> list[VariantShard]:
    with open(path, encoding="utf-8") as handle:
        next(handle)
        return [
            VariantShard(name, kind, int(n))
            for name, kind, n in (line.rstrip("\n").split("\t") for line in handle if line.strip())
        ]


def _read_sets(path: Path) -> dict[str, dict[str, str]]:
    with open(path, encoding="utf-8") as handle:
        header = next(handle).rstrip("\n").split("\t")
        return {
            row[0]: dict(zip(header, row, strict=True)) for row in (line.rstrip("\n").split("\t") for line in handle)
        }


def merge_variant_sets(
    pack_dir: Path | str,
    scores: Mapping[str, Path | str],
    outputs: Mapping[str, Path | str],
    rejects: Mapping[str, Path | str],
    *,
    policy: InputPolicy,
    provenance: Mapping[str, object] | None = None,
) -> dict[str, int]:
    """Each set's `variant_effect` file (`outputs[set]`) and rejects table (`rejects[set]`) from the scored shards
    (`scores[shard]`: the Parquet a shard's scoring wrote), in input order. Variants the model could not score are
    rejects under `on_invalid: skip` and an error otherwise (`policy`). Returns the rows written per set."""
    pack_dir = Path(pack_dir)
    sets = _read_sets(pack_dir / "sets.tsv")
    kind_of = {shard.name: shard.kind for shard in read_variant_manifest(pack_dir / "manifest.tsv")}
    caches: dict[str, RowGroupCache] = {}
    for kind in UNIT_SCHEMAS:  # DNA and protein shards differ in provenance (molecule): one cache each
        files = {shard: Path(path) for shard, path in scores.items() if kind_of[shard] == kind}
        if files:
            caches[kind] = RowGroupCache(files)
    shared = {kind: cache.provenance()[0] for kind, cache in caches.items()}
    written: dict[str, int] = {}
    for name, out in outputs.items():
        if name not in sets:
            raise ValueError(f"variant set {name} is not in {pack_dir / 'sets.tsv'}")
        info = sets[name]
        kind = KINDS[info["kind"]]
        refused = read_variant_rejects(pack_dir / "maps" / f"{name}.rejects.tsv")
        failed: list[VariantReject] = []
        cache = caches.get(kind)
        metadata: dict[str, object] = {
            **shared.get(kind, {}),
            "molecule": kind,  # per-sample provenance, which the shards' shared provenance leaves out
            **(provenance or {}),
            "sample": name,
            "task": "variant_effect",
            "variants": info["variants"],
            "sequences": info["sequences"],
            "n_variants": int(info["n_variants"]),
            "n_refused": len(refused),
        }
        schema = variant_schema(kind)
        map_file = pq.ParquetFile(pack_dir / "maps" / f"{name}.parquet")
        n_rows = 0
        with TableWriter(out) as writer:
            for batch in map_file.iter_batches(batch_size=4096):
                part = pa.Table.from_batches([batch])
                table, dropped = _scored_rows(part, cache, kind, info["variants"])
                failed.extend(dropped)
                n_rows += table.num_rows
                writer.write(table.cast(schema).replace_schema_metadata(provenance_metadata(metadata)))
            if map_file.metadata.num_rows == 0:  # no accepted variant: the file still says what its columns are
                writer.write(schema.empty_table().replace_schema_metadata(provenance_metadata(metadata)))
            if failed and policy.on_invalid != "skip":
                skip = policy.interface.setting("on_invalid", "skip")
                raise ValueError(
                    f"{len(failed)} variant(s) could not be scored; the first: {failed[0].describe()}; use a device "
                    f"with more memory or a smaller variant_window, or set {skip} to list them as rejects"
                )
            expected = int(info["n_variants"])
            if n_rows + len(refused) + len(failed) != expected:
                raise RuntimeError(
                    f"{out}: {n_rows} rows + {len(refused) + len(failed)} rejects but the set has {expected} variants"
                )
        every = sorted([*refused, *failed], key=lambda reject: reject.record)
        write_variant_rejects(every, rejects[name])
        written[name] = n_rows
        log.info(
            "%s: %d variant rows, %d rejects (%d could not be scored by the model)",
            name,
            n_rows,
            len(every),
            len(failed),
        )
    return written


def _scored_rows(
    part: pa.Table, cache: RowGroupCache | None, kind: str, variants: str
) -> tuple[pa.Table, list[VariantReject]]:
    """A batch of map rows joined with their units' scores; rows whose unit failed are dropped and returned."""
    names = [f.name for f in VARIANT_FIELDS[kind]]
    if part.num_rows == 0 or cache is None:
        return variant_schema(kind).empty_table(), []
    shards = np.asarray(part.column("shard").to_numpy(zero_copy_only=False), dtype=object)
    scored = cache.take(shards, part.column("row").to_numpy())
    reasons = scored.column("failed").to_pylist()
    keep = np.array([reason is None for reason in reasons], dtype=bool)
    dropped = []
    if not keep.all():
        labels = _labels(part, kind)
        records = part.column("record").to_pylist()
        for index in np.flatnonzero(~keep).tolist():
            dropped.append(VariantReject(variants, records[index], labels[index], reasons[index]))
    columns = {name: part.column(name) for name in names}
    columns.update({name: scored.column(name) for name in scored.column_names if name != "failed"})
    table = pa.table(columns)
    return (table if keep.all() else table.filter(pa.array(keep))), dropped


def _labels(part: pa.Table, kind: str) -> list[str]:
    from seqshard.io.variants import dna_label

    if kind == "dna":
        values = [part.column(name).to_pylist() for name in ("chrom", "pos", "id", "ref", "alt")]
        return [dna_label(*row) for row in zip(*values, strict=True)]
    ids, mutations = part.column("sequence_id").to_pylist(), part.column("mutations").to_pylist()
    return [f"{i} {m}" for i, m in zip(ids, mutations, strict=True)]


def write_variant_merge_summary(
    path: Path | str, outputs: Mapping[str, Path | str], written: Mapping[str, int]
) -> None:
    """One line per merged file (sample, task, rows, path), as the sequence merges write theirs."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("sample\ttask\trows\tpath\n")
        for sample, file in outputs.items():
            handle.write(f"{sample}\tvariant_effect\t{written.get(sample, 0)}\t{file}\n")
