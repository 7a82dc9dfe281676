"""Every setting of `seqshard serve`, with its default: the command line reads its defaults from here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from seqshard.engine.types import TaskSettings
from seqshard.io.variants import VariantSettings

# Inside a container the server must listen on every interface to be reachable through a published port; the
# images set this variable. Everywhere else the default stays loopback-only.
HOST_VARIABLE = "SEQSHARD_SERVE_HOST"


def default_host() -> str:
    return os.environ.get(HOST_VARIABLE, "127.0.0.1")


@dataclass(frozen=True)
class ServeSettings:
    """What one server runs and the limits it enforces."""

    model: str  # architecture: a key of seqshard.models.ARCHITECTURES (dnabert2, lucaone, esm2, ...)
    checkpoint: str  # directory or hub id
    head: str | None = None  # linear head directory (LucaOne classification / property_prediction)
    host: str = field(default_factory=default_host)
    port: int = 8000
    metrics_port: int | None = 8001  # Prometheus exposition; None: none
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 1  # torch threads of the model worker
    molecule: str = "dna"  # molecule of requests that do not say (options.molecule)
    # How each requested sequence is checked: the input policy of `seqshard embed` (seqshard.io.sequences).
    allowed_ambiguity: str = "N"
    gaps: str = "reject"  # alignment gaps ('-', '.'): refused, or removed
    internal_stops: str = "reject"  # a protein's '*' before its end: refused, or read as X
    # How sequences are fitted to the model and pooled: the settings that shape the numbers, as in `seqshard embed`.
    shaping: TaskSettings = field(default_factory=TaskSettings)
    variants: VariantSettings = field(default_factory=VariantSettings)  # variant_effect: windows, flank, strands
    batch_tokens: int = 16384  # token budget of one model batch, padding included
    max_wait_ms: float = 5.0  # how long the first waiting request waits for company before its batch runs
    max_queue: int = 1024  # sequences waiting or computing; beyond it requests get 503 OVERLOADED
    max_batch_sequences: int = 100  # sequences in one /predict/batch request
    max_sequence_length: int = 5120  # characters of one sequence
    rate_limit: int = 100  # requests per minute per client address; 0: unlimited
    max_body_bytes: int = 1024 * 1024  # refused before parsing beyond this
    # Model tokens one request may ask for ([CLS]/[SEP] and window overlaps included), counted at admission:
    # 16 batches of the default budget, every DNABERT-2 request within the other limits, not a LucaOne batch
    # of 100 x 5,120 residues.
    max_request_tokens: int = 262144
    # What one connection may hold up (seqshard.serve.protocol): the request head's size and header count, and
    # how long the head, the body and an idle connection may take.
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0  # from a request's first byte to the end of its head
    body_timeout: float = 30.0  # from the end of the head to the end of the body
    idle_timeout: float = 15.0  # a connection with no request in progress, new or kept alive
    api_key_file: Path | None = None  # when set, every endpoint but /health needs `Authorization: Bearer <key>`
    graceful_timeout: float = 60.0  # seconds SIGTERM waits for requests in flight; then they get 503

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "max_queue", "max_batch_sequences", "max_sequence_length", "max_body_bytes",
                     "max_request_tokens", "max_header_bytes", "max_headers"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("header_timeout", "body_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.rate_limit < 0 or self.max_wait_ms < 0 or self.graceful_timeout < 0:
            raise ValueError("--rate-limit, --max-wait-ms and --graceful-timeout cannot be negative")

    def api_key(self) -> str | None:
        """The key in `api_key_file` (surrounding whitespace removed); None when no file is set."""
        if self.api_key_file is None:
            return None
        key = Path(self.api_key_file).read_text(encoding="utf-8").strip()
        if not key:
            raise ValueError(f"--api-key-file {self.api_key_file} is empty")
        return key
