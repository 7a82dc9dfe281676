"""Parquet layout: schema, provenance metadata, streamed merge and its row-count check."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqshard import __version__
from seqshard.io.parquet import (
    RowCountMismatchError,
    embedding_schema,
    embedding_table,
    merge_parquet,
    read_provenance,
    write_table,
)

META = {"task": "embed", "architecture": "dnabert2", "checkpoint_digest": "sha256:abc", "pooling": "mean"}


def shard(tmp_path, name, start, rows, hidden=4, meta=META):
    ids = [f"r{i}" for i in range(start, start + rows)]
    emb = np.arange(start * hidden, (start + rows) * hidden, dtype=np.float32).reshape(rows, hidden)
    path = tmp_path / f"{name}.parquet"
    write_table(embedding_table(ids, [10] * rows, [4] * rows, emb, {**meta, "shard": name}), path)
    return path


def test_schema_and_metadata(tmp_path):
    path = shard(tmp_path, "0000", 0, 3)
    schema = pq.read_schema(path)
    assert schema.remove_metadata().equals(embedding_schema(4))
    assert schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert schema.field("length").type == pa.int32() and schema.field("n_tokens").type == pa.int32()
    provenance = read_provenance(path)
    assert provenance["seqshard_version"] == __version__
    assert provenance["checkpoint_digest"] == "sha256:abc" and provenance["pooling"] == "mean"
    frame = pd.read_parquet(path)
    assert list(frame["id"]) == ["r0", "r1", "r2"]
    assert list(frame["embedding"][1]) == [4.0, 5.0, 6.0, 7.0]


def test_merge_streams_in_order_and_keeps_provenance(tmp_path):
    paths = [shard(tmp_path, "0000", 0, 3), shard(tmp_path, "0001", 3, 5), shard(tmp_path, "0002", 8, 1)]
    out = tmp_path / "merged.parquet"
    assert merge_parquet(paths, out, expected_rows=9, extra_metadata={"n_rejected": 2}) == 9
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(9)]
    assert np.array(table.column("embedding").to_pylist()).ravel().tolist() == list(range(36))
    provenance = read_provenance(out)
    assert "shard" not in provenance
    assert json.loads(provenance["n_shards"]) == 3 and json.loads(provenance["n_rejected"]) == 2


def test_merge_refuses_a_missing_row(tmp_path):
    paths = [shard(tmp_path, "0000", 0, 3), shard(tmp_path, "0001", 3, 4)]
    out = tmp_path / "merged.parquet"
    with pytest.raises(RowCountMismatchError, match="merged 7 rows from 2 shard\\(s\\) but the sample has 8"):
        merge_parquet(paths, out, expected_rows=8)
    assert not out.exists()
    assert not list(tmp_path.glob("*.partial"))


def test_merge_refuses_mixed_provenance(tmp_path):
    paths = [shard(tmp_path, "0000", 0, 2), shard(tmp_path, "0001", 2, 2, meta={**META, "pooling": "cls"})]
    with pytest.raises(ValueError, match="provenance differs"):
        merge_parquet(paths, tmp_path / "merged.parquet", expected_rows=4)


def test_shard_files_use_bounded_row_groups(tmp_path):
    from seqshard.io.parquet import ROW_GROUP_ROWS

    path = shard(tmp_path, "0000", 0, 2 * ROW_GROUP_ROWS + 5)
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_row_groups == 3
    assert max(metadata.row_group(i).num_rows for i in range(3)) == ROW_GROUP_ROWS
