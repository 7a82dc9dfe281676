"""The request and response models of the API, declared once: they validate requests and are the OpenAPI document.

Every response is one envelope: `{success, message, data, timestamp, request_id}`, or for an error
`{success: false, message, error: {code, details}, timestamp, request_id}`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError


class TaskType(StrEnum):
    """What a request asks for. Which of these a server can do depends on its checkpoint and head."""

    embedding = "embedding"
    promoter_prediction = "promoter_prediction"  # DNABERT-2 fine-tune's own classification head
    classification = "classification"  # a linear classification head (--head)
    property_prediction = "property_prediction"  # a linear regression head (--head)
    variant_effect = "variant_effect"  # a variant's scores: a DNA window plus a variant, or a protein plus mutations


# The seqshard task (and Parquet schema) behind each task type.
SEQSHARD_TASK = {
    TaskType.embedding: "embed",
    TaskType.promoter_prediction: "classify",
    TaskType.classification: "classify",
    TaskType.property_prediction: "regress",
    TaskType.variant_effect: "variant_effect",
}


class ErrorCode(StrEnum):
    INVALID_REQUEST = "INVALID_REQUEST"  # 400: bad JSON or HTTP, unknown task_type, too many sequences, bad options
    INVALID_SEQUENCE = "INVALID_SEQUENCE"  # 400: letters outside the molecule's alphabet, empty sequence
    SEQUENCE_TOO_LONG = "SEQUENCE_TOO_LONG"  # 400
    UNAUTHORIZED = "UNAUTHORIZED"  # 401: missing or wrong API key
    NOT_FOUND = "NOT_FOUND"  # 404
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"  # 405
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"  # 408: the head or the body did not arrive in time
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"  # 413: body over the size cap, refused before parsing
    TOO_MANY_TOKENS = "TOO_MANY_TOKENS"  # 413: more model tokens than one request may ask for
    RATE_LIMITED = "RATE_LIMITED"  # 429 with Retry-After
    HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"  # 431: request head over the size cap, or too many headers
    PREDICTION_FAILED = "PREDICTION_FAILED"  # 500: this request's prediction failed; others of its batch did not
    INTERNAL_ERROR = "INTERNAL_ERROR"  # 500
    OVERLOADED = "OVERLOADED"  # 503 with Retry-After: the queue is full
    MODEL_NOT_LOADED = "MODEL_NOT_LOADED"  # 503: loading (with Retry-After), or the load failed
    SHUTTING_DOWN = "SHUTTING_DOWN"  # 503: the server stopped before this request's answer was ready


DataT = TypeVar("DataT")


class Envelope(BaseModel, Generic[DataT]):
    success: bool = True
    message: str
    data: DataT
    timestamp: datetime = Field(description="UTC, ISO 8601")
    request_id: UUID


class ErrorDetail(BaseModel):
    code: ErrorCode
    details: str | None = None


class ErrorResponse(BaseModel):
    success: Literal[False] = False
    message: str
    error: ErrorDetail
    timestamp: datetime = Field(description="UTC, ISO 8601")
    request_id: UUID


# --- requests ------------------------------------------------------------------------------------------------

Molecule = Literal["dna", "rna", "protein"]
MAX_LISTED = 5  # problems named in one error message; the rest are counted


class StrictRequest(BaseModel):
    """Unknown fields are refused in one error naming a few of them: with `extra="forbid"` alone pydantic would
    report each one, and a body of 80,000 unknown keys would cost as much to describe as to send."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: object) -> object:
        if isinstance(data, dict) and len(data) > len(cls.model_fields):
            unknown = [str(name) for name in data if name not in cls.model_fields]
            if unknown:
                more = f" and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
                raise PydanticCustomError(
                    "extra_forbidden", "unknown fields {names}", {"names": ", ".join(unknown[:MAX_LISTED]) + more}
                )
        return data


class PredictOptions(StrictRequest):
    return_confidence: bool = Field(True, description="classifiers: include `confidence`")
    batch_size: int | None = Field(
        None, ge=1, description="advisory only: the server gathers concurrent requests into batches by itself"
    )
    embedding_dimension: int | None = Field(None, ge=1, description="if given, must equal the model's")
    molecule: Molecule | None = Field(None, description="default: the server's --molecule")
    variant: str | None = Field(
        None,
        max_length=10000,
        description="variant_effect: DNA, `POS:REF>ALT` with POS 1-based in the sequence (the reference window) and "
        "VCF-style alleles (an indel with its anchor base, e.g. `101:AT>A`); protein, mutations `A24G:K30R` "
        "(1-based). In /predict/batch it applies to every sequence unless `variants` gives one per sequence",
    )


class PredictRequest(StrictRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"sequence": "TATAAAAGGCGCGCATCGATCGGCTAGCTAGGACT", "task_type": "embedding"},
                {"sequence": "TATAAAAGGCGCGCATCGATCGG", "task_type": "promoter_prediction", "options": {}},
            ]
        },
    )

    sequence: str
    task_type: TaskType = Field(TaskType.embedding, description="default: embedding, which every model does")
    options: PredictOptions = Field(default_factory=PredictOptions)


class BatchPredictRequest(StrictRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"sequences": ["TATAAAAGGCGCGC", "ACGTNNACGTAGGA"], "task_type": "embedding"},
                {
                    "sequences": ["MKTAYIAKQRQISFVKSHFSRQ"],
                    "task_type": "classification",
                    "options": {"molecule": "protein"},
                },
            ]
        },
    )

    sequences: list[str] = Field(min_length=1, description="at most --max-batch-sequences (default 100)")
    task_type: TaskType = Field(TaskType.embedding, description="default: embedding, which every model does")
    options: PredictOptions = Field(default_factory=PredictOptions)
    variants: list[str] | None = Field(
        None, description="variant_effect: one variant per sequence, in the form of options.variant"
    )


# --- response data -------------------------------------------------------------------------------------------


class ClassDetails(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: str = Field(alias="class", description="the predicted label")
    probability: float = Field(description="its probability")
    probabilities: dict[str, float] = Field(description="every label's probability")


class Prediction(BaseModel):
    task_type: TaskType
    sequence_length: int
    n_tokens: int | None = Field(None, description="model tokens, [CLS] and [SEP] counted once (not variant_effect)")
    n_windows: int | None = Field(None, description="model inputs the sequence was cut into (not variant_effect)")
    truncated: bool | None = Field(None, description="cut to max_tokens (not variant_effect)")
    processing_time: float = Field(description="seconds from this request's arrival in the queue to its result")
    prediction: float | None = Field(None, description="classifiers: probability of the positive or top class")
    confidence: float | None = Field(None, description="classifiers: probability of the predicted class")
    details: ClassDetails | None = None
    embedding: list[float] | None = Field(None, description="embedding: the pooled last hidden state")
    embeddings: dict[str, list[float]] | None = Field(
        None, description="embedding with --layers: the pooled hidden state of each layer, keyed by the layer as given"
    )
    dimension: int | None = None
    values: dict[str, float] | None = Field(None, description="property_prediction: one value per target")
    variant_effect: dict[str, float | int | None] | None = Field(
        None,
        description="variant_effect: the scores of the variant, named as the Parquet columns of `seqshard variants` "
        "(DNA: llr, embedding_cosine, embedding_l2, change_cosine, change_l2, each also _forward and _reverse, "
        "n_ref_tokens, n_alt_tokens, window_start, window_end; protein: masked_marginal, wild_type_marginal, "
        "embedding_cosine, embedding_l2, change_cosine, change_l2, n_mutations)",
    )


class BatchItem(Prediction):
    sequence: str


class BatchPredictions(BaseModel):
    predictions: list[BatchItem]
    processing_time: float
    total_sequences: int


class MemoryUsage(BaseModel):
    process_rss_bytes: int
    host_percent: float


class Health(BaseModel):
    status: Literal["healthy", "loading", "unhealthy"]
    model: str
    version: str = Field(description="seqshard version")
    uptime: float = Field(description="seconds since the server started")
    gpu_available: bool
    memory_usage: MemoryUsage
    reason: str | None = Field(None, description="why the server is unhealthy")


class InputFormat(BaseModel):
    molecules: list[Molecule]
    default_molecule: Molecule
    alphabets: dict[str, str] = Field(description="accepted letters per molecule, case-insensitive")
    max_sequence_length: int
    max_batch_sequences: int


class ModelInfo(BaseModel):
    name: str = Field(description="architecture")
    version: str = Field(description="the checkpoint as given to --checkpoint")
    description: str
    tasks: list[TaskType]
    input_format: InputFormat
    output_format: dict[str, str] = Field(description="what each task returns")
    max_sequence_length: int
    embedding_dimension: int
    checkpoint_digest: str
    # `layers` is the one list: the layers a --layers server pools, as given.
    settings: dict[str, str | int | float | bool | list[int] | None] = Field(
        description="the settings that shape the numbers (pooling, windows, layers, strand, dtype, ...), as in "
        "Parquet provenance"
    )


class GpuFigures(BaseModel):
    index: int
    name: str
    uuid: str
    utilization_percent: float | None = None
    memory_used_bytes: float | None = None
    memory_total_bytes: float | None = None
    power_watts: float | None = None


class ModelMetrics(BaseModel):
    total_requests: int = Field(description="prediction requests received")
    successful_requests: int
    failed_requests: int = Field(description="answered with an error")
    cancelled_requests: int = Field(0, description="not answered: the client left first (status 499 in Prometheus)")
    average_response_time: float | None = Field(description="seconds, over prediction requests; null before any")
    gpu_utilization: list[GpuFigures] | None = Field(description="per GPU, from NVML; null without a GPU")
    memory_usage: MemoryUsage


class NetworkIO(BaseModel):
    bytes_sent: int
    bytes_recv: int


class SystemMetrics(BaseModel):
    cpu_usage: float = Field(description="host CPU, percent")
    memory_usage: float = Field(description="host memory, percent")
    disk_usage: float = Field(description="disk of the working directory, percent")
    network_io: NetworkIO


class Metrics(BaseModel):
    model_metrics: ModelMetrics
    system_metrics: SystemMetrics


class HealthResponse(Envelope[Health]):
    pass


class ModelInfoResponse(Envelope[ModelInfo]):
    pass


class PredictResponse(Envelope[Prediction]):
    pass


class BatchPredictResponse(Envelope[BatchPredictions]):
    pass


class MetricsResponse(Envelope[Metrics]):
    pass
