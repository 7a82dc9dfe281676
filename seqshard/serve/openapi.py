"""The OpenAPI document of one server: FastAPI's, built from the request and response models, narrowed to what
this server with this model and these flags accepts and answers, so that a client (or a fuzzer) generating
requests from it gets them accepted.

- the task types and molecules of the loaded model only, and examples in its alphabet for each of its tasks;
- `sequences` at most --max-batch-sequences items, each a non-empty string of at most --max-sequence-length
  characters of the accepted letters (the union over the model's molecules: the letters of one molecule depend
  on `options.molecule`, which a schema cannot tie to them), `embedding_dimension` the model's;
- no 422 (validation errors answer 400 in the envelope), no 401 without --api-key-file (and then no Bearer
  scheme at all: the dependency is not there), no 429 with --rate-limit 0.

What the document cannot say: the token cap of one request (--max-request-tokens) depends on the tokenizer.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from seqshard.io.sequences import GAP_CHARACTERS, STOP, sequence_checker

if TYPE_CHECKING:
    from seqshard.serve.service import ModelService
    from seqshard.serve.settings import ServeSettings

EXAMPLES = {"dna": "TATAAAAGGCGCGCATCGATCGGCTAGCTAGGACT", "rna": "UAUAAAAGGCGCGCAUCGAUCGG",
            "protein": "MKTAYIAKQRQISFVKSHFSRQ"}  # fmt: skip
VARIANT_EXAMPLES = {"dna": "12:C>A", "protein": "M1A"}  # in the example sequences above


def _sequence_pattern(service: ModelService, molecules: list[str]) -> str:
    """A regular expression for the sequences some molecule of the server accepts, in either case."""
    letters: set[str] = set()
    stops = ""
    for molecule in molecules:
        checker = sequence_checker(molecule, service.policy)
        letters |= set(checker.letters)
        if service.policy.gaps == "remove":
            letters |= set(GAP_CHARACTERS)
        if molecule == "protein":
            stops = "any" if service.policy.internal_stops == "unknown" else "terminal"
    if stops == "any":
        letters.add(STOP)
    characters = re.escape("".join(sorted(letters | {c.lower() for c in letters})))
    return f"^[{characters}]+" + (re.escape(STOP) + "?$" if stops == "terminal" else "$")


def describe_this_server(schema: dict[str, Any], service: ModelService, settings: ServeSettings) -> dict[str, Any]:
    """`schema` (FastAPI's document, changed in place and returned) narrowed to this server (module docstring)."""
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    dropped = {"422"} | ({"401"} if settings.api_key_file is None else set())
    dropped |= {"429"} if settings.rate_limit == 0 else set()
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status in dropped:
                operation.get("responses", {}).pop(status, None)
    loaded = service.loaded
    if loaded is None:  # still loading: the general document
        return schema
    molecules = sorted(loaded.molecules)
    tasks = [task.value for task in service.task_types()]
    components["TaskType"]["enum"] = tasks
    options = components["PredictOptions"]["properties"]
    options["molecule"]["anyOf"][0]["enum"] = molecules
    dimension = options["embedding_dimension"]["anyOf"][0]
    dimension["minimum"] = dimension["maximum"] = loaded.hidden_size
    sequence = {"type": "string", "minLength": 1, "maxLength": settings.max_sequence_length,
                "pattern": _sequence_pattern(service, molecules)}  # fmt: skip
    components["PredictRequest"]["properties"]["sequence"].update(sequence)
    batch = components["BatchPredictRequest"]["properties"]["sequences"]
    batch["items"] = sequence
    batch["maxItems"] = settings.max_batch_sequences
    batch["description"] = f"at most {settings.max_batch_sequences} (--max-batch-sequences)"
    default, others = settings.molecule, [m for m in molecules if m != settings.molecule]
    single, several = [], []
    for task in tasks:
        if task == "variant_effect":  # a sequence and a variant in it: its first residue changed
            if default not in VARIANT_EXAMPLES:
                continue
            variant = VARIANT_EXAMPLES[default]
            single.append({"sequence": EXAMPLES[default], "task_type": task, "options": {"variant": variant}})
            several.append({"sequences": [EXAMPLES[default]], "task_type": task, "variants": [variant]})
            continue
        single.append({"sequence": EXAMPLES[default], "task_type": task})
        several.append({"sequences": [EXAMPLES[default], EXAMPLES[default][::-1]], "task_type": task})
    if others:
        single.append({"sequence": EXAMPLES[others[0]], "options": {"molecule": others[0]}})
    components["PredictRequest"]["examples"] = single
    components["BatchPredictRequest"]["examples"] = several
    return schema
