"""Gather a model entry's scored shards back into one file per sample and task, through the pack's record map.

`merge_model` writes each sample's file per task: rows in the sample's input order, each with the record's own id
and length and its sequence's values (so duplicates, within or across samples, get identical values), streaming the
map one bounded batch at a time. A model entry may hold samples of several molecules (LucaOne takes DNA, RNA and
protein; the pack cuts shards per molecule): the shards then differ in their `molecule` alone, and each sample's
files carry its own. A sample the pack set aside as unreadable (`on_invalid: skip`) gets files of no rows whose
provenance says so (`status` unreadable, `error` the reason), and `check_merged` ends the run naming it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqshard.io.fasta import Rejected, write_rejects
from seqshard.io.parquet import ROW_GROUP_ROWS, TableWriter, provenance_metadata, write_table
from seqshard.plan.packing import OK, REJECTS_HEADER, UNREADABLE, name_samples, read_pack_samples

# Provenance that may differ between the scored shards of one model entry: each sample's file carries its own.
PER_SAMPLE_PROVENANCE = ("molecule",)

log = logging.getLogger(__name__)


class RowGroupCache:
    """Decoded row groups of the scored shards of one task, least recently used dropped beyond a byte budget."""

    def __init__(self, files: Mapping[str, Path], budget_bytes: int = 16 * 2**20) -> None:
        self.files = {name: pq.ParquetFile(path, pre_buffer=False) for name, path in files.items()}
        self.bounds = {
            name: np.cumsum([0] + [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)])
            for name, f in self.files.items()
        }
        self.budget = budget_bytes
        self._cache: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()
        self._bytes = 0

    def group(self, shard: str, index: int) -> pa.Table:
        key = (shard, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        table = self.files[shard].read_row_group(index)
        self._cache[key] = table
        self._bytes += table.nbytes
        while self._bytes > self.budget and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._bytes -= dropped.nbytes
        return table

    def take(self, shards: np.ndarray, rows: np.ndarray) -> pa.Table:
        """The rows (shard, row) in the order given."""
        parts: list[pa.Table] = []
        order: list[np.ndarray] = []
        for shard in dict.fromkeys(shards.tolist()):
            where = np.flatnonzero(shards == shard)
            wanted = rows[where]
            groups = np.searchsorted(self.bounds[shard], wanted, side="right") - 1
            for group in np.unique(groups).tolist():
                inside = groups == group
                table = self.group(shard, group)
                parts.append(table.take(pa.array(wanted[inside] - self.bounds[shard][group])))
                order.append(where[inside])
        combined = pa.concat_tables(parts)
        return combined.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    def provenance(self) -> tuple[dict[str, str], pa.Schema]:
        """The provenance every shard shares, the per-sample keys (molecule) left out, and the files' schema; an
        error names a shard that differs and how."""
        reference: dict[str, str] | None = None
        first = ""
        for shard, handle in self.files.items():
            raw = handle.schema_arrow.metadata or {}
            theirs = {
                name: value.decode()
                for key, value in raw.items()
                if key.startswith(b"seqshard.") and key != b"seqshard.seqshard_version"
                and (name := key.decode().removeprefix("seqshard.")) not in PER_SAMPLE_PROVENANCE
            }  # fmt: skip
            if reference is None:
                reference, first = theirs, shard
            elif theirs != reference:
                differing = sorted(k for k in theirs.keys() | reference.keys() if theirs.get(k) != reference.get(k))
                shown = "; ".join(f"{k}: {reference.get(k)!r} vs {theirs.get(k)!r}" for k in differing)
                raise ValueError(
                    f"scored shard {shard} differs in provenance from shard {first} ({shown}); cannot merge"
                )
        assert reference is not None
        return reference, next(iter(self.files.values())).schema_arrow


def _inference_rejects(directory: Path, shard_fasta: Path) -> dict[int, str]:
    """Rows of a scored shard that could not be scored (its `rejects.tsv`, ids `u<index>`), row -> reason."""
    reasons: dict[str, str] = {}
    with open(directory / "rejects.tsv", encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            _, record_id, _, reason = line.rstrip("\n").split("\t", 3)
            reasons[record_id] = reason
    if not reasons:
        return {}
    with open(shard_fasta, encoding="utf-8") as handle:
        headers = [line[1:].strip() for line in handle if line.startswith(">")]
    return {row: reasons[name] for row, name in enumerate(headers) if name in reasons}


def _per_sample(record_map: pq.ParquetFile, failed: Mapping[str, Mapping[int, str]]) -> dict[str, tuple[int, int]]:
    """For each sample: the shards its records sit in, and its records that could not be scored — known before
    any row is written, for the files' provenance."""
    used: dict[str, set[str]] = {}
    unscored: dict[str, int] = {}
    for batch in record_map.iter_batches(columns=["sample", "shard", "row"]):
        for sample, shard, row in zip(*(column.to_pylist() for column in batch.columns), strict=True):
            used.setdefault(sample, set()).add(shard)
            if row in failed.get(shard, {}):
                unscored[sample] = unscored.get(sample, 0) + 1
    return {sample: (len(shards), unscored.get(sample, 0)) for sample, shards in used.items()}


def _append(writer: TableWriter, scored: RowGroupCache, schema: pa.Schema, rows: pa.Table,
            metadata: Mapping[bytes, bytes]) -> None:  # fmt: skip
    """Append records (rows of the record map) to a sample's file: their sequences' values, their own ids."""
    if rows.num_rows == 0:
        return
    shards = np.asarray(rows.column("shard").to_numpy(zero_copy_only=False), dtype=object)
    values = scored.take(shards, rows.column("row").to_numpy())
    values = values.set_column(0, schema.field("id"), rows.column("id"))
    values = values.set_column(1, schema.field("length"), rows.column("length"))
    writer.write(values.replace_schema_metadata(metadata))


def write_merge_summary(
    path: Path | str,
    outputs: Mapping[tuple[str, str], Path | str],
    written: Mapping[str, int],
    unreadable: Collection[str] = (),
) -> None:
    """One line per merged file (sample, task, rows, status, path): the merge's one small output that `rule all` and
    the report ask for. Naming thousands of per-sample files as targets makes Snakemake's planning quadratic (each
    target is matched against every output of the merge). `status` is `unreadable` for the samples in `unreadable`
    (their files hold no rows), `ok` otherwise."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("sample\ttask\trows\tstatus\tpath\n")
        for (sample, task), file in outputs.items():
            status = UNREADABLE if sample in unreadable else OK
            handle.write(f"{sample}\t{task}\t{written.get(sample, 0)}\t{status}\t{file}\n")


def unreadable_samples(pack_dir: Path | str) -> dict[str, tuple[str, str]]:
    """The samples a pack set aside (`on_invalid: skip`): sample -> (its FASTA, why it could not be used)."""
    return {
        sample: (row["fasta"], row.get("error", ""))
        for sample, row in read_pack_samples(Path(pack_dir) / "samples.tsv").items()
        if row.get("status") == UNREADABLE
    }


class UnreadableSamples(ValueError):
    """Samples of a model entry that could not be read: one line each (`lines`, each told on its own)."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


def check_merged(pack_dir: Path | str, model: str, flag: Path | str) -> None:
    """End with one line per sample the pack set aside as unreadable, or write `flag` (every sample merged).

    The merge has written the other samples' files by now, and those stay: this job fails on its own, so that the
    run ends with an error, and Snakemake tries it again on the next run until the files are fixed.
    """
    samples = read_pack_samples(Path(pack_dir) / "samples.tsv")
    unreadable = unreadable_samples(pack_dir)
    merged = len(samples) - len(unreadable)
    if unreadable:
        raise UnreadableSamples(
            [
                f"sample {sample} ({fasta}): {reason}; its results are empty (models.{model}: the entry's other "
                f"{merged} sample(s) were merged)"
                for sample, (fasta, reason) in unreadable.items()
            ]
        )
    Path(flag).write_text(f"models.{model}: all {len(samples)} sample(s) read and merged\n", encoding="utf-8")


def merge_model(
    pack_dir: Path | str,
    scored: Mapping[str, Mapping[str, Path | str]],
    outputs: Mapping[tuple[str, str], Path | str],
    model_rejects: Mapping[str, Path | str],
    *,
    model: str,
    on_invalid: str = "error",
    sample_rejects: Mapping[str, Path | str] | None = None,
) -> dict[str, int]:
    """Write every sample's file for every task of one model from its scored shards.

    `scored[task][shard]` is the directory a shard's scoring wrote for the pass holding `task` (it has
    `<task>.parquet` and `rejects.tsv`); `outputs[(sample, task)]` the file to write; `model_rejects[sample]` the
    sample's table of records that could not be scored (an error naming them with `on_invalid="error"`);
    `sample_rejects[sample]` where to copy the sample's invalid records from the pack (each sample's table is
    written by one model entry's merge: a job with thousands of inputs and outputs is slow to plan and record).

    The record map is streamed in input order, a bounded batch at a time, each batch's rows gathered from the
    scored shards (through a small cache of decoded row groups) and appended to its sample's files: memory stays
    flat whatever the number of rows. Returns the rows written per sample.
    """
    pack_dir = Path(pack_dir)
    summaries = read_pack_samples(pack_dir / "samples.tsv")
    _split_rejects(pack_dir / "rejects.tsv", sample_rejects or {})
    tasks = list(dict.fromkeys(task for _, task in outputs))
    unreadable = unreadable_samples(pack_dir)
    asked = {sample for sample, _ in outputs}
    wanted = asked - set(unreadable)
    # Rows of scored shards that could not be scored (too large for the device even alone), per shard.
    failed: dict[str, dict[int, str]] = {}
    for by_shard in scored.values():
        for shard, directory in by_shard.items():
            rows = _inference_rejects(Path(directory), pack_dir / "shards" / f"{shard}.fa")
            failed.setdefault(shard, {}).update(rows)
    caches = {
        task: RowGroupCache({shard: Path(d) / f"{task}.parquet" for shard, d in scored[task].items()}) for task in tasks
    }
    provenance = {task: cache.provenance() for task, cache in caches.items()}
    record_map = pq.ParquetFile(pack_dir / "records.parquet")
    per_sample = _per_sample(record_map, failed)
    written: dict[str, int] = {}
    writers: dict[str, TableWriter] = {}
    metadata: dict[str, dict[bytes, bytes]] = {}
    rejected: list[Rejected] = []
    current: str | None = None

    def close(sample: str) -> None:
        expected = int(summaries[sample]["n_valid"]) - len(rejected)
        if written.get(sample, 0) != expected:  # raised inside the writers, so no partial file is left behind
            raise RuntimeError(f"{sample}: merged {written.get(sample, 0)} rows but the sample has {expected}")
        for writer in writers.values():
            writer.__exit__(None)
        writers.clear()
        write_rejects(rejected, Path(model_rejects[sample]))
        log.info("%s: %d rows per task (%s)%s", sample, written[sample], ", ".join(tasks),
                 f", {len(rejected)} record(s) could not be scored" if rejected else "")  # fmt: skip
        rejected.clear()

    try:
        for batch in record_map.iter_batches(batch_size=ROW_GROUP_ROWS):
            part = pa.Table.from_batches([batch])
            samples_here = part.column("sample").to_numpy(zero_copy_only=False)
            for sample in dict.fromkeys(samples_here.tolist()):
                if sample not in wanted:
                    continue
                if sample != current:
                    if current is not None:
                        close(current)
                    current = sample
                    n_shards, unscored = per_sample[sample]
                    extra = {"model": model, "sample": sample, "molecule": summaries[sample]["molecule"],
                             "n_shards": n_shards, "n_rejected": int(summaries[sample]["n_rejected"]) + unscored,
                             "status": OK}  # fmt: skip
                    for task in tasks:
                        writers[task] = TableWriter(outputs[(sample, task)])
                        metadata[task] = provenance_metadata({**provenance[task][0], **extra})
                rows, failures = _without_failed(
                    part.filter(pa.array(samples_here == sample)), failed, summaries[sample]["fasta"], on_invalid
                )
                rejected.extend(failures)
                for task in tasks:
                    _append(writers[task], caches[task], provenance[task][1], rows, metadata[task])
                written[sample] = written.get(sample, 0) + rows.num_rows
        if current is not None:
            close(current)
    except BaseException as error:
        for writer in writers.values():  # the sample being written, if any: no partial file stays behind
            writer.__exit__(type(error))
        raise
    missing = sorted(wanted - set(written))
    if missing:
        raise ValueError(f"samples {missing} have no records in {pack_dir / 'records.parquet'}")
    for sample, (fasta, reason) in unreadable.items():
        if sample in asked:
            extra = {"model": model, "sample": sample, "molecule": summaries[sample]["molecule"], "n_shards": 0,
                     "n_rejected": int(summaries[sample]["n_rejected"]), "status": UNREADABLE,
                     "error": f"{fasta}: {reason}"}  # fmt: skip
            _write_unreadable({task: outputs[(sample, task)] for task in tasks}, provenance, extra)
            write_rejects([], Path(model_rejects[sample]))
            written[sample] = 0
    if unreadable:
        log.warning("%d sample(s) could not be read; their files hold no rows and say so: %s", len(unreadable),
                    name_samples(list(unreadable)))  # fmt: skip
    return written


def _write_unreadable(
    files: Mapping[str, Path | str],
    provenance: Mapping[str, tuple[dict[str, str], pa.Schema]],
    extra: Mapping[str, object],
) -> None:
    """The files of a sample that could not be read: per task no rows, in the task's schema, and provenance that
    says so (`status` unreadable, `error` the reason), so that no one takes them for results."""
    for task, path in files.items():
        shared, schema = provenance[task]
        write_table(schema.empty_table().replace_schema_metadata(provenance_metadata({**shared, **extra})), path)


def _split_rejects(table: Path, outputs: Mapping[str, Path | str]) -> None:
    """Each sample's own rejects table (header always present) from the pack's table of every sample."""
    rows: dict[str, list[str]] = {sample: [] for sample in outputs}
    with open(table, encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            sample, rest = line.split("\t", 1)
            if sample in rows:
                rows[sample].append(rest)
    for sample, path in outputs.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(REJECTS_HEADER + "".join(rows[sample]), encoding="utf-8")


def _without_failed(
    part: pa.Table, failed: Mapping[str, Mapping[int, str]], fasta: str, on_invalid: str
) -> tuple[pa.Table, list[Rejected]]:
    """The sample's map rows minus records whose sequence could not be scored, rows renumbered to the scored
    files (which lack those rows), and the rejects (or, with `on_invalid="error"`, an error naming them)."""
    if not any(failed.values()):
        return part, []
    shards = part.column("shard").to_pylist()
    rows = part.column("row").to_numpy().copy()
    keep = np.ones(part.num_rows, dtype=bool)
    rejected: list[Rejected] = []
    ids, lines = part.column("id").to_pylist(), part.column("line").to_pylist()
    for i, (shard, row) in enumerate(zip(shards, rows.tolist(), strict=True)):
        reasons = failed.get(shard)
        if not reasons:
            continue
        if row in reasons:
            keep[i] = False
            rejected.append(Rejected(fasta, ids[i], lines[i], reasons[row]))
        else:
            rows[i] = row - sum(1 for r in reasons if r < row)
    if rejected and on_invalid != "skip":
        first = rejected[0]
        raise ValueError(
            f"{len(rejected)} record(s) could not be scored; first: {first.describe()}; lower max_tokens or "
            "window_length, use a device with more memory, or set `on_invalid: skip` to list them as rejects"
        )
    part = part.set_column(part.schema.get_field_index("row"), "row", pa.array(rows))
    return part.filter(pa.array(keep)), rejected
