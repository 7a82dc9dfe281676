"""The Parquet layout of seqshard's outputs: schemas, provenance metadata, per-shard writing and streamed merging.

Every output file carries its provenance as key-value metadata under `seqshard.*` keys, so a Parquet file read
years later still says which model, checkpoint digest, seqshard version and settings produced its numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqshard import __version__

METADATA_PREFIX = "seqshard."
ROW_GROUP_ROWS = 4096


class RowCountMismatchError(RuntimeError):
    """A merged output does not hold exactly one row per valid input record."""


BASE_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("length", pa.int32(), nullable=False),  # residues
    pa.field("n_tokens", pa.int32(), nullable=False),  # model tokens including [CLS] and [SEP] (once)
    pa.field("n_windows", pa.int32(), nullable=False),  # model inputs the sequence was cut into
    pa.field("truncated", pa.bool_(), nullable=False),  # True when `long_sequences: truncate` cut it
]


# Per token (with per_token): the residues [start, end) each token the sequence owns is credited with, in the
# record's own coordinates (they tile the record), and the residues the token stood for in its window.
TOKEN_FIELDS = [
    pa.field("token_start", pa.list_(pa.int32()), nullable=False),
    pa.field("token_end", pa.list_(pa.int32()), nullable=False),
    pa.field("token_text", pa.list_(pa.string()), nullable=False),
]


def layer_suffixes(layers: Sequence[int] | None) -> list[str]:
    """Column suffixes of an embed output's layers: none for the default (the last layer: `embedding`,
    `per_token`, `per_base`), `_l<layer>` per layer asked for, as written (`embedding_l-1`, `embedding_l6`)."""
    return [""] if layers is None else [f"_l{layer}" for layer in layers]


def task_schema(
    task: str, hidden_size: int = 0, labels: Sequence[str] = (), per_token: bool = False, *,
    per_base: bool = False, layers: Sequence[int] | None = None,
) -> pa.Schema:  # fmt: skip
    """The one definition of every output table's columns, per task.

    `embed`: a pooled vector per layer (`layers`; None: the last layer as `embedding`); with `per_token`, each
    owned token's vector per layer (float16) and the token fields; with `per_base`, each residue's vector per layer.
    """
    fields = list(BASE_FIELDS)
    if task == "embed":
        suffixes = layer_suffixes(layers)
        vector = pa.list_(pa.float16(), hidden_size)
        fields += [pa.field(f"embedding{x}", pa.list_(pa.float32(), hidden_size), nullable=False) for x in suffixes]
        if per_token:
            fields += [pa.field(f"per_token{x}", pa.list_(vector), nullable=False) for x in suffixes]
            fields += TOKEN_FIELDS
        if per_base:
            fields += [pa.field(f"per_base{x}", pa.list_(vector), nullable=False) for x in suffixes]
    elif task == "mlm_score":
        fields += [
            pa.field("pll", pa.float64(), nullable=False),  # sum of log P(true token | rest), natural log
            pa.field("pll_per_token", pa.float64(), nullable=False),
            pa.field("n_scored", pa.int32(), nullable=False),
        ]
    elif task == "classify":
        fields += [pa.field(f"prob_{label}", pa.float32(), nullable=False) for label in labels]
        fields.append(pa.field("predicted_label", pa.string(), nullable=False))
    elif task == "regress":
        fields += [pa.field(label, pa.float32(), nullable=False) for label in labels]
    else:
        raise ValueError(f"unknown task {task!r}")
    return pa.schema(fields)


# variant_effect: the columns that name a variant (as its input file does), then its scores. A DNA score is given
# averaged over the strands scored and for each strand (the reverse strand's are null with `strand: forward`).
VARIANT_FIELDS: dict[str, list[pa.Field]] = {
    "dna": [
        pa.field("record", pa.int64(), nullable=False),  # 1-based data record of the VCF
        pa.field("allele", pa.int32(), nullable=False),  # 1-based ALT of a multi-allelic record
        pa.field("chrom", pa.string(), nullable=False),
        pa.field("pos", pa.int64(), nullable=False),  # VCF POS, 1-based
        pa.field("id", pa.string(), nullable=False),
        pa.field("ref", pa.string(), nullable=False),
        pa.field("alt", pa.string(), nullable=False),
        pa.field("window_start", pa.int64(), nullable=False),  # the REF window on the reference, 0-based
        pa.field("window_end", pa.int64(), nullable=False),  # exclusive
    ],
    "protein": [
        pa.field("record", pa.int64(), nullable=False),  # 1-based data row of the mutation table
        pa.field("sequence_id", pa.string(), nullable=False),
        pa.field("mutations", pa.string(), nullable=False),
        pa.field("length", pa.int32(), nullable=False),  # residues of the wild type
    ],
}
DNA_SCORES = ("llr", "embedding_cosine", "embedding_l2", "change_cosine", "change_l2")
PROTEIN_SCORES = (
    "masked_marginal",
    "wild_type_marginal",
    "embedding_cosine",
    "embedding_l2",
    "change_cosine",
    "change_l2",
)
VARIANT_SCORE_FIELDS: dict[str, list[pa.Field]] = {
    "dna": [
        *(
            pa.field(f"{name}{strand}", pa.float64(), nullable=strand == "_reverse")
            for name in DNA_SCORES
            for strand in ("", "_forward", "_reverse")
        ),
        pa.field("n_ref_tokens", pa.int32(), nullable=False),  # tokens scored in the forward REF window
        pa.field("n_alt_tokens", pa.int32(), nullable=False),  # and in the forward ALT window
    ],
    "protein": [
        *(pa.field(name, pa.float64(), nullable=name == "wild_type_marginal") for name in PROTEIN_SCORES),
        pa.field("n_mutations", pa.int32(), nullable=False),
    ],
}


def variant_schema(kind: str, *, scored: bool = False) -> pa.Schema:
    """`variant_effect`'s output for DNA (`dna`) or protein (`protein`) variants; with `scored`, a scored shard's
    columns instead: the scores plus `failed` (why a unit could not be scored; null when it was)."""
    if kind not in VARIANT_FIELDS:
        raise ValueError(f"unknown variant kind {kind!r}; expected one of {sorted(VARIANT_FIELDS)}")
    if scored:
        return pa.schema([*VARIANT_SCORE_FIELDS[kind], pa.field("failed", pa.string())])
    return pa.schema([*VARIANT_FIELDS[kind], *VARIANT_SCORE_FIELDS[kind]])


def embedding_schema(hidden_size: int) -> pa.Schema:
    """Schema of task `embed`: one pooled vector per sequence."""
    return task_schema("embed", hidden_size)


def provenance_metadata(values: Mapping[str, object]) -> dict[bytes, bytes]:
    """Key-value metadata: strings stay as they are, everything else is stored as JSON."""
    merged: dict[str, object] = {"seqshard_version": __version__, **values}
    return {
        f"{METADATA_PREFIX}{key}".encode(): (value if isinstance(value, str) else json.dumps(value)).encode()
        for key, value in merged.items()
    }


def read_provenance(path: Path | str) -> dict[str, str]:
    """The `seqshard.*` metadata of a Parquet file, prefix removed, values as stored."""
    metadata = pq.read_schema(path).metadata or {}
    return {
        key.decode()[len(METADATA_PREFIX) :]: value.decode()
        for key, value in metadata.items()
        if key.decode().startswith(METADATA_PREFIX)
    }


def vectors_array(vectors: np.ndarray, value_type: pa.DataType | None = None) -> pa.Array:
    """[rows, width] numbers as a fixed_size_list column."""
    rows, width = vectors.shape
    value_type = value_type or pa.float32()
    # Converted by numpy, then wrapped: pa.array(values, type) copies and checks value by value instead (21 ms
    # for a chunk of 4096 DNABERT-2 embeddings against microseconds).
    flat = np.ascontiguousarray(vectors, dtype=value_type.to_pandas_dtype()).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), width)


def per_token_array(matrices: Sequence[np.ndarray], hidden_size: int) -> pa.Array:
    """One [tokens, hidden] matrix per row as list<fixed_size_list<float16>>."""
    offsets = np.zeros(len(matrices) + 1, dtype=np.int32)
    np.cumsum([len(m) for m in matrices], out=offsets[1:])
    stacked = np.concatenate(matrices).astype(np.float16) if matrices else np.zeros((0, hidden_size), np.float16)
    return pa.ListArray.from_arrays(pa.array(offsets), vectors_array(stacked, pa.float16()))


def ragged_array(values: np.ndarray | Sequence[object], counts: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """Rows of `counts[i]` values each, taken in order from the flat `values`, as a list<value_type> column."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, value_type))


def results_table(schema: pa.Schema, columns: Mapping[str, object], metadata: Mapping[str, object]) -> pa.Table:
    """A table in `schema`'s column order from arrays or Python sequences, with provenance metadata."""
    missing = [name for name in schema.names if name not in columns]
    if missing or len(columns) != len(schema.names):
        raise ValueError(f"columns {sorted(columns)} do not match the schema's {schema.names}")
    arrays = [
        value if isinstance(value, pa.Array) else pa.array(value, field.type)
        for field, value in ((field, columns[field.name]) for field in schema)
    ]
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata(provenance_metadata(metadata)))


def task_table(
    task: str,
    hidden_size: int,
    base: Mapping[str, object],
    columns: Mapping[str, object],
    metadata: Mapping[str, object],
    per_token: bool = False,
) -> pa.Table:
    """One task's output rows: the base columns (id, length, n_tokens, n_windows, truncated), then the task's.

    A head's labels are read off its columns: `prob_<label>` for classify, one column per target for regress; so
    are an embedding's layers (`embedding_l<layer>`), per-token and per-base vectors.
    """
    labels = {
        "classify": [name.removeprefix("prob_") for name in columns if name.startswith("prob_")],
        "regress": list(columns),
    }.get(task, [])
    layers = [int(name.removeprefix("embedding_l")) for name in columns if name.startswith("embedding_l")]
    schema = task_schema(
        task, hidden_size, labels, per_token or any(name.startswith("per_token") for name in columns),
        per_base=any(name.startswith("per_base") for name in columns), layers=layers or None,
    )  # fmt: skip
    return results_table(schema, {**base, **columns}, metadata)


def embedding_table(
    ids: Sequence[str],
    lengths: Sequence[int],
    n_tokens: Sequence[int],
    embeddings: np.ndarray,
    metadata: Mapping[str, object],
) -> pa.Table:
    """An `embed` table for unwindowed, untruncated sequences (one window each)."""
    rows, hidden = embeddings.shape
    return results_table(
        task_schema("embed", hidden),
        {
            "id": ids,
            "length": lengths,
            "n_tokens": n_tokens,
            "n_windows": [1] * rows,
            "truncated": [False] * rows,
            "embedding": vectors_array(embeddings.astype(np.float32)),
        },
        metadata,
    )


class TableWriter:
    """Writes one Parquet file table by table, atomically: rows go to `<out>.partial`, which becomes `out` only
    when the writer closes without an error (a crashed job never leaves a half-written file that looks complete).

    Row groups hold at most ROW_GROUP_ROWS rows, so a reader (the merge) holds one small row group at a time and
    its memory stays flat whatever the shard size. The first table fixes the schema and its metadata.
    """

    def __init__(self, out: Path | str) -> None:
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self._writer: pq.ParquetWriter | None = None
        self.n_rows = 0

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.partial, table.schema, compression="zstd")
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.n_rows += table.num_rows

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        if self._writer is not None:
            self._writer.close()
        if error_type is not None:
            self.partial.unlink(missing_ok=True)
        elif self._writer is None:
            raise ValueError(f"{self.out}: nothing was written, so there is no schema to write an empty file with")
        else:
            self.partial.replace(self.out)


def write_table(table: pa.Table, out: Path | str) -> None:
    """Write one table atomically in bounded row groups (see TableWriter)."""
    with TableWriter(out) as writer:
        writer.write(table)


def merge_parquet(
    shard_paths: Sequence[Path | str],
    out: Path | str,
    expected_rows: int,
    extra_metadata: Mapping[str, object] | None = None,
) -> int:
    """Concatenate shard files in the order given, one row group at a time, and check the row count.

    Memory stays at one row group (at most ROW_GROUP_ROWS rows, as seqshard writes them) whatever the number of
    rows or the size of a shard. All shards must share one schema and one
    provenance (same model, checkpoint digest, settings); the merged file keeps that provenance, adds
    `extra_metadata`, and is removed again if its row count differs from `expected_rows`.
    """
    if not shard_paths:
        raise ValueError(f"no shard files to merge into {out}")
    first = pq.read_schema(shard_paths[0])
    provenance = read_provenance(shard_paths[0])
    provenance.pop("seqshard_version", None)
    shard_provenance_keys = {"shard", "n_shards"}
    schema = first.with_metadata(
        provenance_metadata(
            {
                **{k: v for k, v in provenance.items() if k not in shard_provenance_keys},
                "n_shards": len(shard_paths),
                **(extra_metadata or {}),
            }
        )
    )
    reference = {k: v for k, v in provenance.items() if k not in shard_provenance_keys}
    with TableWriter(out) as writer:
        for path in shard_paths:
            # Row group by row group, without pre-buffering: pre-buffering reads ahead over every row group the
            # reader is given, which held a whole shard in memory (peak RSS grew with shard size).
            shard_file = pq.ParquetFile(path, pre_buffer=False)
            if not shard_file.schema_arrow.remove_metadata().equals(schema.remove_metadata()):
                raise ValueError(f"{path}: schema differs from {shard_paths[0]}; cannot merge")
            theirs = {k: v for k, v in read_provenance(path).items() if k not in shard_provenance_keys}
            theirs.pop("seqshard_version", None)
            if theirs != reference:
                raise ValueError(f"{path}: provenance differs from {shard_paths[0]}: {theirs} vs {reference}")
            for group in range(shard_file.num_row_groups):
                writer.write(shard_file.read_row_group(group).replace_schema_metadata(schema.metadata))
        if writer.n_rows != expected_rows:  # raised inside the writer, so no partial file is left behind
            raise RowCountMismatchError(
                f"{out}: merged {writer.n_rows} rows from {len(shard_paths)} shard(s) but the sample has "
                f"{expected_rows} valid input records; refusing to write an incomplete result"
            )
    return writer.n_rows
