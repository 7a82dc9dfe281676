"""The served model: loading it, what it can do, checking requests, and running one batch of them.

At admission (`admit`) a request's model tokens are bounded from its residues (`ModelFit.token_bound`); only
when the bound is over `--max-request-tokens` are they counted exactly, by tokenizing the request in a thread of
its own (the event loop never waits for it), and a request really over the cap is refused. Tokenizing every
request at admission would cost a thread hand-off per request and keep requests from reaching the queue while
the worker gathers a batch; the worker tokenizes its whole batch in one call instead. A batch runs through
`seqshard.engine.chunks.score_encoded_records`, the code path of `seqshard embed` / `score` and of the workflow:
the same tokenizer, windows (one `ModelFit`), token-budget batcher, model and task reductions, and the same output
columns, turned into JSON by `seqshard.serve.columns`.
Served and batch results are therefore the same numbers. Each sequence is checked by `seqshard.io.sequences`,
the check the FASTA reader runs on every record, with the same policy options (`--allowed-ambiguity`, `--gaps`,
`--internal-stops`): a protein ending in '*' is served as `seqshard embed` scores it, and a refused sequence
gets the reason a FASTA record would.

Task types map onto seqshard's tasks: `embedding` is `embed`; a classification head gives `promoter_prediction`
(the DNABERT-2 fine-tune's own head) or `classification` (a `--head` directory); a regression head gives
`property_prediction`; a masked-LM head gives `variant_effect`: a DNA sequence taken as the reference window plus a
variant in it (`POS:REF>ALT`), or a protein plus mutations, placed as `seqshard variants` places them
(`seqshard.io.variants`) and scored by the same engine function (`seqshard.engine.variants.score_units`).
`/model/info` lists only what the loaded checkpoint and head can do.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

from seqshard import __version__
from seqshard.engine.chunks import RecordError, chunk_table, score_encoded_records
from seqshard.engine.heads import head_digest, load_linear_head
from seqshard.engine.runner import Runner
from seqshard.engine.tasks import fit_for, prepare_tasks
from seqshard.engine.types import RunFigures, TaskSettings, VariantWork
from seqshard.engine.variants import score_units
from seqshard.engine.windows import ModelFit
from seqshard.io.fasta import SequenceRecord
from seqshard.io.interface import SERVE
from seqshard.io.sequences import InputPolicy, accepted_letters, allowed_letters, sequence_checker
from seqshard.io.variants import PlacedVariant, ProteinUnit, Unit, dna_letters, place_dna_variant, protein_unit
from seqshard.models import ARCHITECTURES, LoadedModel, get_loader, layer_numbers
from seqshard.runtime.devices import resolve_device, resolve_dtype
from seqshard.serve.columns import predictions_from_table
from seqshard.serve.errors import ApiError, retry_after
from seqshard.serve.metrics import ServerMetrics
from seqshard.serve.schemas import SEQSHARD_TASK, ErrorCode, PredictOptions, TaskType
from seqshard.serve.settings import ServeSettings

log = logging.getLogger(__name__)

OUTPUT_FORMATS = {
    TaskType.embedding: "embedding: the pooled last hidden state (float32 vector) and its dimension; with --layers, "
    "embeddings: one vector per layer, keyed by the layer as given",
    TaskType.promoter_prediction: "prediction, confidence and details: class, probability, every label's probability",
    TaskType.classification: "prediction, confidence and details: class, probability, every label's probability",
    TaskType.property_prediction: "values: one number per target of the head",
    TaskType.variant_effect: "variant_effect: the variant's scores, named as the columns of `seqshard variants`",
}
DNA_VARIANT = re.compile(r"\s*(\d+)\s*:\s*([A-Za-z]+)\s*>\s*(\S+)\s*")


@dataclass(frozen=True)
class VariantQuery:
    """One variant_effect item as it waits in the queue: its unit, its sequence's length (what the queue estimates
    tokens from) and the columns that place it (a DNA variant's window on the sequence)."""

    unit: Unit
    length: int
    placed: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.length


class ModelService:
    """Holds the model once loaded; `status` is loading, healthy or unhealthy (the load failed: `reason`)."""

    def __init__(self, settings: ServeSettings, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.started = time.time()
        self.status = "loading"
        self.reason: str | None = None
        self.loaded: LoadedModel | None = None
        self.tasks: dict[TaskType, TaskSettings] = {}
        self.variant_work: VariantWork | None = None  # when the checkpoint has a masked-LM head
        self.fit: ModelFit | None = None
        self.device = self.dtype = ""
        self.policy = InputPolicy(
            allowed_ambiguity=settings.allowed_ambiguity, gaps=settings.gaps, internal_stops=settings.internal_stops,
            interface=SERVE,
        )  # fmt: skip
        # Counting a large request's tokens takes up to a few hundred milliseconds: never on the event loop.
        self.tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="seqshard-tokenizer")

    # --- loading -------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the checkpoint (and head); runs in a thread while the server already answers /health."""
        settings = self.settings
        try:
            started = time.perf_counter()
            self.device = resolve_device(settings.device)
            self.dtype = resolve_dtype(settings.dtype, self.device)
            import torch

            loaded = get_loader(settings.model)(settings.checkpoint, self.device, torch.float32, interface=SERVE)
            own_head = loaded.sequence_head
            if settings.head is not None:
                loaded = replace(loaded, sequence_head=load_linear_head(settings.head, loaded.hidden_size, self.device))
            if settings.molecule not in loaded.molecules:
                raise ValueError(
                    f"{settings.model} does not accept {settings.molecule} sequences (--molecule; it accepts "
                    f"{', '.join(sorted(loaded.molecules))})"
                )
            available = [TaskType.embedding]
            head = loaded.sequence_head
            if head is not None and head.kind == "classify":
                available.append(TaskType.promoter_prediction if head is own_head else TaskType.classification)
            elif head is not None:
                available.append(TaskType.property_prediction)
            if settings.shaping.layers is not None:  # a layer the model does not have stops the load, saying so
                layer_numbers(settings.shaping.layers, loaded.num_layers)
            # A --head is loaded once above; per batch, score_records uses it as if it were the checkpoint's own.
            self.tasks = {task: replace(settings.shaping, task=SEQSHARD_TASK[task], head=None) for task in available}
            if loaded.mlm_head is not None:
                self.variant_work = VariantWork(settings.model, settings.checkpoint, settings.variants, self.policy)
            self.fit = ModelFit.of(loaded, settings.shaping)
            self.loaded = loaded
            seconds = time.perf_counter() - started
            self.metrics.model_load_seconds.set(seconds)
            self.metrics.model_loaded.set(1)
            self.status = "healthy"
            log.info(
                "loaded %s from %s in %.2f s on %s (%s); tasks: %s", settings.model, loaded.checkpoint_dir, seconds,
                self.device, self.dtype, ", ".join(self.task_types()),
            )  # fmt: skip
        except Exception as error:  # noqa: BLE001 - any load failure makes the server unhealthy, with the reason
            self.reason = f"{type(error).__name__}: {error}"
            self.status = "unhealthy"
            log.error("could not load the model: %s", self.reason)

    def task_types(self) -> list[TaskType]:
        """What this server can do with its checkpoint and head."""
        return [*self.tasks, *([TaskType.variant_effect] if self.variant_work is not None else [])]

    def require_ready(self) -> LoadedModel:
        if self.loaded is not None:
            return self.loaded
        if self.status == "loading":
            raise ApiError(ErrorCode.MODEL_NOT_LOADED, "the model is still loading", headers=retry_after(5))
        raise ApiError(ErrorCode.MODEL_NOT_LOADED, "the model could not be loaded", self.reason)

    # --- requests ------------------------------------------------------------------------------------------

    def check_request(
        self, sequences: list[str], task_type: TaskType, options: PredictOptions, *, single: bool,
        variants: list[str] | None = None,
    ) -> tuple[Hashable, list[str] | list[VariantQuery]]:  # fmt: skip
        """The batch key (task, molecule) and the upper-cased sequences (for variant_effect, each variant placed in
        its sequence), or the ApiError that refuses them."""
        loaded = self.require_ready()
        settings = self.settings
        if task_type not in self.task_types():
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"task_type {task_type.value!r} is not available on this server",
                f"this checkpoint{' and head' if settings.head else ''} can do: {', '.join(self.task_types())}",
            )
        if options.embedding_dimension is not None and options.embedding_dimension != loaded.hidden_size:
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"options.embedding_dimension is {options.embedding_dimension}, but this model's is "
                f"{loaded.hidden_size}",
            )
        molecule = options.molecule or self.settings.molecule
        if molecule not in loaded.molecules:
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"{settings.model} does not accept {molecule} sequences",
                f"accepted molecules: {', '.join(sorted(loaded.molecules))}",
            )
        problem = self.tasks[task_type].molecule_problem(molecule) if task_type in self.tasks else None
        if problem is not None:
            raise ApiError(ErrorCode.INVALID_REQUEST, f"{settings.model} is served with {problem}")
        checker = sequence_checker(molecule, self.policy)
        checked = []
        for index, sequence in enumerate(sequences):
            name = "the sequence" if single else f"sequence {index}"
            if len(sequence) > settings.max_sequence_length:
                raise ApiError(
                    ErrorCode.SEQUENCE_TOO_LONG,
                    f"{name} has {len(sequence)} characters; at most {settings.max_sequence_length}",
                    f"sequence {index}, length {len(sequence)}",
                )
            result = checker.check(sequence)
            if result.fault is not None:
                position = result.fault.position
                where = "" if position is None else f"at position {position + 1}"
                details = f"sequence {index}" + (
                    "" if position is None else f", position {position + 1}, character {sequence[position]!r}"
                )
                raise ApiError(ErrorCode.INVALID_SEQUENCE, f"{name}: {result.fault.describe(where)}", details)
            checked.append(result.sequence)
        if task_type == TaskType.variant_effect:
            return (task_type, molecule), self._place_variants(checked, molecule, options, variants, single)
        if variants is not None:
            raise ApiError(ErrorCode.INVALID_REQUEST, "`variants` is for task_type variant_effect only")
        return (task_type, molecule), checked

    async def admit(self, key: Hashable, sequences: list[str]) -> None:
        """TOO_MANY_TOKENS when the request's model tokens are more than one request may ask for: bounded from the
        residues, counted exactly (in the tokenizer thread) only when the bound is over the cap."""
        assert self.fit is not None
        limit = self.settings.max_request_tokens
        if key[0] == TaskType.variant_effect:  # type: ignore[index]
            self._admit_variants(sequences, limit)  # type: ignore[arg-type]
            return
        task_type, molecule = key  # type: ignore[misc]
        strands = 2 if self.tasks[task_type].task == "embed" and self.tasks[task_type].strand == "both" else 1
        if strands * sum(self.fit.token_bound(len(sequence)) for sequence in sequences) <= limit:
            return
        tokenizer = self.require_ready().for_molecule(molecule).tokenizer
        encoded = await asyncio.get_running_loop().run_in_executor(
            self.tokenizer_thread, replace(self.fit, reverse=strands == 2).encode, sequences, tokenizer
        )
        n_tokens = encoded.n_model_tokens + (encoded.reverse.n_model_tokens if encoded.reverse is not None else 0)
        if n_tokens > limit:
            raise ApiError(
                ErrorCode.TOO_MANY_TOKENS,
                f"this request asks for {n_tokens} model tokens; at most {limit} per request",
                f"{len(sequences)} sequence(s) in {strands * encoded.n_inputs} model input(s) ([CLS], [SEP], window "
                "overlaps and with --strand both the reverse strand counted): send fewer or shorter sequences per "
                "request",
            )

    def _admit_variants(self, queries: list[VariantQuery], limit: int) -> None:
        """TOO_MANY_TOKENS for variant_effect: a bound on the model tokens of every pass a variant costs (each
        allele's window unmasked, and once per scored token masked; a protein once per mutated position)."""
        assert self.fit is not None and self.variant_work is not None
        settings = self.variant_work.settings
        total = 0
        for query in queries:
            unit = query.unit
            if isinstance(unit, ProteinUnit):
                total += (len(set(unit.positions)) + 3) * self.fit.token_bound(len(unit.sequence))
                continue
            strands = 2 if settings.strand == "both" else 1
            for window in unit.windows("forward"):
                low, high = window.span(settings.flank)
                total += strands * (high - low + 1) * self.fit.token_bound(len(window.bases))
        if total > limit:
            raise ApiError(
                ErrorCode.TOO_MANY_TOKENS,
                f"this request's variants ask for up to {total} model tokens; at most {limit} per request",
                f"{len(queries)} variant(s), each scored over several passes (README, 'Variant effects'): send fewer "
                "variants or shorter windows per request",
            )

    def _place_variants(
        self, sequences: list[str], molecule: str, options: PredictOptions, variants: list[str] | None, single: bool
    ) -> list[VariantQuery]:
        """Each sequence's variant placed as `seqshard variants` places it, or the ApiError saying why it cannot."""
        if molecule not in ("dna", "protein"):
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"variant_effect scores DNA (a reference window plus a variant) or proteins (plus mutations), not "
                f"{molecule}",
            )
        texts = variants if variants is not None else [options.variant] * len(sequences)
        if len(texts) != len(sequences):
            raise ApiError(
                ErrorCode.INVALID_REQUEST, f"{len(texts)} variants for {len(sequences)} sequences: one per sequence"
            )
        assert self.variant_work is not None
        queries = []
        for index, (sequence, text) in enumerate(zip(sequences, texts, strict=True)):
            name = "the sequence" if single else f"sequence {index}"
            if not text:
                form = "`POS:REF>ALT` (1-based in the sequence)" if molecule == "dna" else "mutations like `A24G:K30R`"
                raise ApiError(ErrorCode.INVALID_REQUEST, f"{name}: variant_effect needs a variant: {form}")
            unit, placed = self._place_one(sequence, text, molecule, name)
            queries.append(VariantQuery(unit, len(sequence), placed))
        return queries

    def _place_one(self, sequence: str, text: str, molecule: str, name: str) -> tuple[Unit, dict[str, int]]:
        assert self.variant_work is not None
        if molecule == "protein":
            unit = protein_unit(sequence, text, name)
            if isinstance(unit, str):
                raise ApiError(ErrorCode.INVALID_REQUEST, f"{name}: the mutations {text!r} cannot be scored: {unit}")
            return unit, {}
        match = DNA_VARIANT.fullmatch(text)
        if match is None:
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"{name}: variant {text!r} is not of the form POS:REF>ALT (1-based POS in the sequence, VCF-style "
                "alleles: an indel with its anchor base, e.g. 101:AT>A)",
            )
        placed = place_dna_variant(
            lambda start, end: sequence[start:end], len(sequence), int(match.group(1)) - 1,
            (match.group(2), match.group(3)), self.variant_work.settings, dna_letters(self.settings.allowed_ambiguity),
        )  # fmt: skip
        if not isinstance(placed, PlacedVariant):
            raise ApiError(ErrorCode.INVALID_REQUEST, f"{name}: the variant {text!r} cannot be scored: {placed}")
        return placed.unit, {"window_start": placed.window_start, "window_end": placed.window_end}

    # --- the model worker ----------------------------------------------------------------------------------

    def run_batch(
        self, key: Hashable, jobs: list[list[str]], should_stop: Callable[[], bool]
    ) -> tuple[list[list[dict[str, object]]], int]:
        """Predict every job's sequences in one pass of the batch code path; per job, one result per sequence, and
        the model tokens computed (padding excluded).

        Runs in the model worker thread; `should_stop` is consulted before every model batch (RunCancelled).
        Record ids name the sequence within its request, so an error raised for one sequence (a window too long
        in tokens, say) names it when the job is run alone.
        """
        task_type, molecule = key  # type: ignore[misc]
        if task_type == TaskType.variant_effect:
            return self._run_variants(molecule, jobs, should_stop)  # type: ignore[arg-type]
        loaded = self.require_ready().for_molecule(molecule)
        settings = self.tasks[task_type]
        records: list[SequenceRecord] = []
        for job in jobs:
            for index, sequence in enumerate(job):
                records.append(SequenceRecord(len(records), f"sequences[{index}]", sequence, 0))
        started = time.perf_counter()
        figures = RunFigures({}, self.device, self.dtype, self.settings.threads, self.settings.batch_tokens)
        runner = Runner(loaded, figures, batch_tokens=self.settings.batch_tokens, dtype=self.dtype)
        runner.should_stop = should_stop
        tasks = prepare_tasks(loaded, [settings])
        encoded = fit_for(loaded, tasks).encode([record.sequence for record in records], loaded.tokenizer)
        scored = score_encoded_records(runner, records, encoded, tasks)
        predictions = predictions_from_table(settings.task, chunk_table(scored, settings, loaded.hidden_size, {}))
        results: list[list[dict[str, object]]] = []
        position = 0
        for job in jobs:
            results.append(predictions[position : position + len(job)])
            position += len(job)
        self.metrics.observe_batch(
            task_type.value, len(records), figures.n_tokens, figures.n_computed_tokens, figures.n_batches,
            time.perf_counter() - started,
        )  # fmt: skip
        return results, figures.n_tokens

    def _run_variants(
        self, molecule: str, jobs: list[list[VariantQuery]], should_stop: Callable[[], bool]
    ) -> tuple[list[list[dict[str, object]]], int]:
        """The variant_effect items of a batch through the engine's `score_units`, with the batch path's runner."""
        assert self.variant_work is not None
        loaded = self.require_ready().for_molecule(molecule)
        queries = [query for job in jobs for query in job]
        started = time.perf_counter()
        figures = RunFigures({}, self.device, self.dtype, self.settings.threads, self.settings.batch_tokens)
        runner = Runner(loaded, figures, batch_tokens=self.settings.batch_tokens, dtype=self.dtype)
        runner.should_stop = should_stop
        scores = score_units(runner, [query.unit for query in queries], self.variant_work)
        if scores.failed:  # the queue runs the jobs again one by one: only the failing request gets the error
            raise RecordError(next(iter(scores.failed.values())))
        results: list[list[dict[str, object]]] = []
        position = 0
        for job in jobs:
            rows = []
            for query in job:
                values = {name: _json_number(column[position]) for name, column in scores.columns.items()}
                rows.append({"sequence_length": query.length, "variant_effect": {**query.placed, **values}})
                position += 1
            results.append(rows)
        self.metrics.observe_batch(
            TaskType.variant_effect.value, len(queries), figures.n_tokens, figures.n_computed_tokens,
            figures.n_batches, time.perf_counter() - started,
        )  # fmt: skip
        return results, figures.n_tokens

    # --- descriptions --------------------------------------------------------------------------------------

    def health(self) -> dict[str, object]:
        return {
            "status": self.status,
            "model": self.settings.model,
            "version": __version__,
            "uptime": time.time() - self.started,
            "gpu_available": self.metrics.gpu_sampler is not None,
            "memory_usage": self.metrics.memory_usage(),
            "reason": self.reason,
        }

    def info(self) -> dict[str, object]:
        loaded = self.require_ready()
        settings = self.settings
        molecules = sorted(loaded.molecules)
        shaping = settings.shaping
        assert self.fit is not None
        provenance = {
            **{
                key: value
                for key, value in asdict(shaping).items()
                if key not in ("task", "head", "per_token", "per_base")
            },
            "num_layers": loaded.num_layers,
            "window_length": self.fit.window_length,
            "window_overlap": self.fit.window_overlap,
            "max_tokens": self.fit.max_tokens,
            "architecture": settings.model,
            "checkpoint": settings.checkpoint,
            "checkpoint_digest": loaded.digest,
            "dtype": self.dtype,
            "device": self.device,
            "hidden_size": loaded.hidden_size,
            "allowed_ambiguity": settings.allowed_ambiguity,
            "gaps": settings.gaps,
            "internal_stops": settings.internal_stops,
            "head": settings.head,
            "head_digest": head_digest(settings.head) if settings.head else None,
        }
        return {
            "name": settings.model,
            "version": settings.checkpoint,
            "description": ARCHITECTURES[settings.model].description,
            "tasks": self.task_types(),
            "input_format": {
                "molecules": molecules,
                "default_molecule": self.settings.molecule,
                "alphabets": {
                    molecule: accepted_letters(molecule, allowed_letters(molecule, settings.allowed_ambiguity))
                    for molecule in molecules
                },
                "max_sequence_length": settings.max_sequence_length,
                "max_batch_sequences": settings.max_batch_sequences,
            },
            "output_format": {task.value: OUTPUT_FORMATS[task] for task in self.task_types()},
            "max_sequence_length": settings.max_sequence_length,
            "embedding_dimension": loaded.hidden_size,
            "checkpoint_digest": loaded.digest,
            "settings": provenance,
        }


def _json_number(value: object) -> float | int | None:
    """A score as JSON: NaN (a score that does not apply, such as the reverse strand with `--strand forward`) is
    null."""
    number = value.item() if hasattr(value, "item") else value
    if isinstance(number, float) and math.isnan(number):
        return None
    return number  # type: ignore[return-value]
