"""Between the engine's output columns (the Parquet schema of `seqshard.io.parquet.task_schema`) and the API's JSON
predictions, both ways, in one place: the server turns the table its batch produced into predictions, and
`seqshard predict` turns predictions back into the same table, so a served file and a batch file are alike.

JSON per task: `embed` gives `embedding` and `dimension` (with `--layers`, `embeddings` instead: one vector per
layer, keyed by the layer as given, from the `embedding_l<layer>` columns); `classify` gives `prediction` (a
binary classifier's probability of its second, positive label, else the top class's), `confidence` (the top class's
probability) and `details` (`class`, `probability`, every label's `probabilities`); `regress` gives `values` per
target. Every prediction also carries the base columns as `sequence_length`, `n_tokens`, `n_windows` and
`truncated`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from seqshard.io.parquet import BASE_FIELDS, vectors_array

# Base columns as the API names them (`length` is the record's residues).
BASE_KEYS = {"length": "sequence_length", "n_tokens": "n_tokens", "n_windows": "n_windows", "truncated": "truncated"}
LAYER_PREFIX = "embedding_l"  # an embedding of a chosen layer (seqshard.io.parquet.layer_suffixes)


def _labels(task: str, table: pa.Table) -> list[str]:
    task_columns = table.column_names[len(BASE_FIELDS) :]
    if task == "classify":
        return [name.removeprefix("prob_") for name in task_columns if name.startswith("prob_")]
    return list(task_columns)


def predictions_from_table(task: str, table: pa.Table) -> list[dict[str, Any]]:
    """One prediction per row of an engine table of `task` (base columns, then the task's)."""
    rows: list[dict[str, Any]] = [
        dict(zip(BASE_KEYS.values(), values, strict=True))
        for values in zip(*(table.column(name).to_pylist() for name in BASE_KEYS), strict=True)
    ]
    if task == "embed":
        layered = [name for name in table.column_names if name.startswith(LAYER_PREFIX)]
        for name in layered or ["embedding"]:
            column = table.column(name).combine_chunks()
            vectors = column.flatten().to_numpy().reshape(len(column), -1)
            for row, vector in zip(rows, vectors.tolist(), strict=True):
                if layered:
                    row.setdefault("embeddings", {})[name.removeprefix(LAYER_PREFIX)] = vector
                else:
                    row["embedding"] = vector
                row["dimension"] = len(vector)
        return rows
    labels = _labels(task, table)
    values = np.stack([table.column(name).to_numpy() for name in table.column_names[len(BASE_FIELDS) :]
                       if name != "predicted_label"], axis=1).astype(np.float32)  # fmt: skip
    if task == "regress":
        for row, numbers in zip(rows, values.tolist(), strict=True):
            row["values"] = dict(zip(labels, numbers, strict=True))
        return rows
    for row, probabilities in zip(rows, values, strict=True):
        top = int(probabilities.argmax())
        # A binary classifier reports the probability of its positive (second) label; others their top class.
        positive = float(probabilities[1]) if len(labels) == 2 else float(probabilities[top])
        row.update(
            prediction=positive,
            confidence=float(probabilities[top]),
            details={
                "class": labels[top],
                "probability": float(probabilities[top]),
                "probabilities": dict(zip(labels, probabilities.tolist(), strict=True)),
            },
        )
    return rows


def columns_from_predictions(
    task: str, ids: Sequence[str], predictions: Sequence[Mapping[str, Any]]
) -> dict[str, object]:
    """The engine's columns (base and task) for `predictions` of records `ids`: the inverse of
    `predictions_from_table`."""
    columns: dict[str, object] = {"id": list(ids)}
    columns.update({name: [p[key] for p in predictions] for name, key in BASE_KEYS.items()})
    if task == "embed" and predictions[0].get("embeddings"):
        for layer in predictions[0]["embeddings"]:
            vectors = np.array([p["embeddings"][layer] for p in predictions], dtype=np.float32)
            columns[f"{LAYER_PREFIX}{layer}"] = vectors_array(vectors)
    elif task == "embed":
        columns["embedding"] = vectors_array(np.array([p["embedding"] for p in predictions], dtype=np.float32))
    elif task == "classify":
        labels = list(predictions[0]["details"]["probabilities"])
        for label in labels:
            columns[f"prob_{label}"] = np.array(
                [p["details"]["probabilities"][label] for p in predictions], dtype=np.float32
            )
        columns["predicted_label"] = [p["details"]["class"] for p in predictions]
    else:
        for label in predictions[0]["values"]:
            columns[label] = np.array([p["values"][label] for p in predictions], dtype=np.float32)
    return columns
