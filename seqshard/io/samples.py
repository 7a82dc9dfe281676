"""The sample sheet: a tab-separated table of samples, read exactly and checked row by row against its schema.

Every problem is one line naming the sheet, the line and the column. The sheet is read as text, not through
pandas' parser, because pandas' conveniences lose data here: `comment="#"` cuts a path such as `run#3/a.fa`,
`NA` becomes a missing value, and a space-separated sheet ends in a KeyError. Here only whole lines starting
with `#` are comments, every value is a string as written, and values with stray whitespace are errors (not
silently stripped: a path with a trailing space is a different path).
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pandas as pd
import yaml

from seqshard.io.textfiles import TextFileError, TextLines

REQUIRED_COLUMNS = ("sample", "fasta", "molecule")
# Optional: a sample with one of these is a variant set (a VCF against the reference in `fasta`, or a mutation
# table against the proteins in `fasta`), scored by the variant_effect task.
VARIANT_COLUMNS = ("vcf", "mutations")


class SampleSheetError(TextFileError):
    """The sample sheet cannot be used; the message names the sheet, the line and the column."""


def load_sample_sheet(path: Path | str, schema: Path | str | None = None, *, check_files: bool = True) -> pd.DataFrame:
    """The sheet's rows as strings, indexed by sample name, every row checked against `schema` (JSON Schema).

    With `check_files`, each `fasta` must be an existing file; leave it off when inputs live in remote storage
    (paths with `://` are never checked). Relative paths are read from the working directory.
    """
    path = Path(path)
    lines = TextLines(path, SampleSheetError)
    header: list[str] | None = None
    header_line = 0
    rows: list[list[str]] = []
    row_lines: list[int] = []
    for text in lines:
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        where = f"{path}, line {lines.number}"
        fields = text.split("\t")
        if header is None:
            header, header_line = _check_header(fields, where), lines.number
            continue
        if len(fields) != len(header):
            raise SampleSheetError(
                f"{where}: {len(fields)} field(s) but the header (line {header_line}) has {len(header)}; "
                "columns must be separated by single tabs" + (" (this line has spaces instead?)" if " " in text else "")
            )
        rows.append(fields)
        row_lines.append(lines.number)
    if header is None:
        raise SampleSheetError(f"{path}: no header line (columns {', '.join(REQUIRED_COLUMNS)}, tab-separated)")
    if not rows:
        raise SampleSheetError(f"{path}: a header (line {header_line}) but no samples; add one row per sample")

    validator = _validator(schema)
    first_line: dict[str, int] = {}
    for fields, number in zip(rows, row_lines, strict=True):
        row = dict(zip(header, fields, strict=True))
        for column, value in row.items():
            where = f"{path}, line {number}, column {column}"
            if value != value.strip():
                raise SampleSheetError(f"{where}: value {value!r} has leading or trailing whitespace; remove it")
            if not value and column in REQUIRED_COLUMNS:
                raise SampleSheetError(f"{where}: empty; every sample needs a {column}")
        if validator is not None:
            error = jsonschema.exceptions.best_match(validator.iter_errors(row))
            if error is not None:
                column = str(error.path[0]) if error.path else "?"
                raise SampleSheetError(f"{path}, line {number}, column {column}: {error.message}{_case_hint(error)}")
        name = row["sample"]
        if name in first_line:
            raise SampleSheetError(
                f"{path}, line {number}, column sample: {name!r} is already the sample of line {first_line[name]}; "
                "sample names must be unique"
            )
        first_line[name] = number
        if check_files:
            for column in ("fasta", *VARIANT_COLUMNS):
                if row.get(column):
                    _check_file(row[column], f"{path}, line {number}, column {column}")
    return pd.DataFrame(rows, columns=header, dtype=str).set_index("sample", drop=False)


def _check_header(fields: list[str], where: str) -> list[str]:
    if len(fields) == 1 and set(REQUIRED_COLUMNS) <= set(fields[0].split()):
        raise SampleSheetError(f"{where}: the header has no tabs; columns must be separated by tabs, not spaces")
    for name in fields:
        if name != name.strip() or not name:
            raise SampleSheetError(f"{where}: column name {name!r} is empty or has stray whitespace")
    repeated = sorted({name for name in fields if fields.count(name) > 1})
    if repeated:
        raise SampleSheetError(f"{where}: column(s) {', '.join(repeated)} appear more than once in the header")
    missing = [name for name in REQUIRED_COLUMNS if name not in fields]
    if missing:
        raise SampleSheetError(
            f"{where}: the header lacks column(s) {', '.join(missing)} (it has: {', '.join(fields)}); "
            f"a sample sheet needs {', '.join(REQUIRED_COLUMNS)}, tab-separated"
        )
    return fields


def _validator(schema: Path | str | None) -> jsonschema.protocols.Validator | None:
    if schema is None:
        return None
    with open(schema, encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    return jsonschema.validators.validator_for(document)(document)


def _case_hint(error: jsonschema.exceptions.ValidationError) -> str:
    """For a choice written in another case (`DNA`), the spelling accepted."""
    if error.validator == "enum" and isinstance(error.instance, str):
        for choice in error.validator_value:
            if isinstance(choice, str) and choice.lower() == error.instance.lower():
                return f"; write {choice!r}"
    return ""


def _check_file(value: str, where: str) -> None:
    if "://" in value:
        return  # a storage URL: the storage provider fetches it
    fasta = Path(value)
    if fasta.is_dir():
        kind = "a FASTA file" if where.endswith("column fasta") else "a file"
        raise SampleSheetError(f"{where}: {value} is a directory, not {kind}")
    if fasta.is_symlink() and not fasta.exists():
        raise SampleSheetError(
            f"{where}: {value} is a symbolic link to {fasta.readlink()}, which does not exist (a moved or deleted "
            "file, or a link made relative to another folder)"
        )
    if not fasta.exists():
        raise SampleSheetError(
            f"{where}: {value}: no such file (relative paths are read from the working directory, {Path.cwd()})"
        )
