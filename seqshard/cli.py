"""The `seqshard` command: the workflow's code paths, usable outside Snakemake and inside the containers."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from seqshard import __version__
from seqshard.demo import DEMOS
from seqshard.engine.types import SEAM_SAMPLE
from seqshard.models import ARCHITECTURES
from seqshard.runtime.logs import EXPECTED_ERRORS, log_failure, setup_logging

if TYPE_CHECKING:
    from seqshard.engine.types import TaskSettings
    from seqshard.io.variants import VariantSettings


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's formatter that appends each option's default to its help, except where there is none to show (no
    value, an off switch) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


POOLING_HELP = "how a sequence's token vectors become one: their mean or maximum ([CLS]/[SEP] excluded), or [CLS]"


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqshard", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"seqshard {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at debug level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        """A subcommand whose own --help starts with what it does and shows every default."""
        return commands.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)

    embed = command("embed", "embed every sequence of a FASTA file into a Parquet file")
    add_run_arguments(embed)
    embed.add_argument("--pooling", default="mean", choices=["mean", "max", "cls"], help=POOLING_HELP)
    embed.add_argument(
        "--per-token", action="store_true",
        help="also write every token's vector (float16), the residues it is credited with and its text",
    )  # fmt: skip
    embed.add_argument(
        "--per-base", action="store_true",
        help="DNA/RNA: also write every base's vector: the vector of the token credited with it (float16)",
    )  # fmt: skip
    add_layer_arguments(embed)
    embed.add_argument(
        "--strand", choices=["both", "forward"],
        help="DNA: forward embeds the sequence as given (the default); both also its reverse complement, averaged",
    )  # fmt: skip

    score = command(
        "score", "score sequences: mlm_score (pseudo-log-likelihood), classify or regress (fine-tuned head)"
    )
    add_run_arguments(score)
    score.add_argument(
        "--task", required=True, choices=["mlm_score", "classify", "regress"],
        help="mlm_score: each token masked once; classify, regress: the checkpoint's head, or --head",
    )  # fmt: skip
    score.add_argument(
        "--head", help="linear head directory or s3://bucket/prefix for classify/regress (README, 'Heads')"
    )

    variants = command(
        "variants", "score variants: a VCF/BCF against its reference FASTA (DNA), or mutations against a protein FASTA"
    )
    add_variant_arguments(variants)

    upload = command("upload", "upload a checkpoint or head directory to s3://bucket/prefix, each file with its sha256")
    upload.add_argument("directory", type=Path, help="the checkpoint or head directory")
    upload.add_argument("url", help="s3://bucket/prefix (endpoint: AWS_ENDPOINT_URL; credentials: AWS_* variables)")

    fetch = command(
        "fetch", "fetch s3://bucket/prefix into this node's checkpoint cache (SEQSHARD_CACHE) and print its path"
    )
    fetch.add_argument(
        "url", help="s3://bucket/prefix of a checkpoint or head (uploaded with `seqshard upload`, or any prefix)"
    )

    serve = command("serve", "serve a model over HTTP (README, 'Serving')")
    add_serve_arguments(serve)

    predict = command(
        "predict", "predict every sequence of a FASTA file on a running server; same Parquet as embed/score"
    )
    predict.add_argument("fasta", type=Path, help="input FASTA: plain, gzip, bzip2 or xz (detected from the content)")
    predict.add_argument("-o", "--output", type=Path, required=True, help="output Parquet file")
    predict.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    predict.add_argument(
        "--task-type",
        default="embedding",
        choices=["embedding", "promoter_prediction", "classification", "property_prediction"],
        help="what to ask the server for (its /model/info lists what its model can do)",
    )
    predict.add_argument("--molecule", choices=["dna", "rna", "protein"], help="default: the server's")
    predict.add_argument("--api-key-file", type=Path, help="file holding the server's API key")
    predict.add_argument("--batch-size", type=int, default=100, help="sequences per request (server maximum: 100)")
    predict.add_argument("--concurrency", type=int, default=4, help="requests in flight")

    demo = command("demo-checkpoint", "write a small RANDOM-weight checkpoint (or head) in a published layout")
    demo.add_argument("output", type=Path, help="directory to create")
    demo.add_argument(
        "--kind",
        default="dnabert2-demo",
        choices=list(DEMOS),
        help="which random-weight checkpoint to write, in the published layout: DNABERT-2 (masked LM), DNABERT-2 "
        "promoter classifier (GUE layout), LucaOne, a linear head for LucaOne, ESM-2, or the Nucleotide Transformer",
    )
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by every task: input, output, model, long-sequence handling, device and speed."""
    parser.add_argument("fasta", type=Path, help="input FASTA: plain, gzip, bzip2 or xz (detected from the content)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output Parquet file")
    add_model_arguments(parser)
    parser.add_argument(
        "--on-invalid",
        default="error",
        choices=["error", "skip"],
        help="an invalid record stops the run before any scoring (error, the default), or is left out and "
        "listed in the rejects table (skip)",
    )
    parser.add_argument(
        "--rejects", type=Path, help="rejects table (TSV) to write (default: beside the output, OUTPUT.rejects.tsv)"
    )
    add_policy_arguments(parser)
    parser.add_argument("--figures", type=Path, help="also write run figures (timings, tokens) as JSON here")
    parser.add_argument(
        "--seam-sample", type=int, default=SEAM_SAMPLE,
        help="windowed records embedded again with other windows, to measure in the figures what the seams cost; "
        "0: none",
    )  # fmt: skip
    parser.add_argument(
        "--cache", type=Path, help="result cache directory: reuse results of earlier runs for the same sequences"
    )
    parser.add_argument("--cache-max-gb", type=float, default=20.0, help="size cap of the result cache (GB)")


def add_layer_arguments(parser: argparse.ArgumentParser) -> None:
    """`--layers`: embed and serve."""
    parser.add_argument(
        "--layers", type=int, nargs="+", metavar="LAYER",
        help="embeddings of these layers (one column each, embedding_l<LAYER>) instead of the last: 0 is the "
        "embeddings' output, N the last layer, negative counts from the top (-1 the last), as fair-esm counts",
    )  # fmt: skip


def add_model_arguments(parser: argparse.ArgumentParser, *, fitting: bool = True) -> None:
    """The model and how sequences are fitted to it, device and speed: shared by embed, score and serve (and,
    without the fitting of long sequences, variants)."""
    parser.add_argument("--model", default="dnabert2", choices=list(ARCHITECTURES), help="model architecture")
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint directory, s3://bucket/prefix or hub id (owner/name)"
    )
    if fitting:
        parser.add_argument(
            "--molecule", default="dna", choices=["dna", "rna", "protein"],
            help="what the sequences are: the alphabet they are checked against (DNABERT-2 takes DNA only)",
        )  # fmt: skip
        parser.add_argument(
            "--long-sequences", default="window", choices=["window", "truncate"],
            help="a sequence over --max-tokens: cut into overlapping windows, or its first tokens kept",
        )  # fmt: skip
        parser.add_argument("--window-length", type=int, help="residues per window (default: the model's)")
        parser.add_argument("--window-overlap", type=int, help="residues shared by neighbouring windows")
        parser.add_argument("--max-tokens", type=int, help="longest model input in tokens (default: the checkpoint's)")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="token budget per batch, padding included")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when torch sees it, else the CPU), cpu, cuda or cuda:N"
    )
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: fp32 on CPU; on GPU bf16 from compute capability 8.0, fp16 on 7.x, fp32 below",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")


def add_variant_arguments(parser: argparse.ArgumentParser) -> None:
    """`seqshard variants`: the variant set, where the output goes, the model, and how variants are scored."""
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--vcf", type=Path, help="DNA variants: VCF or BCF, plain or bgzipped (with --reference)")
    inputs.add_argument(
        "--mutations", type=Path, help="protein mutations: TSV with sequence_id and mutations (A24G:K30R; with --fasta)"
    )
    parser.add_argument("--reference", type=Path, help="the reference FASTA the VCF was called on (plain or bgzipped)")
    parser.add_argument("--fasta", type=Path, help="the proteins the mutations refer to (FASTA)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output Parquet file")
    add_model_arguments(parser, fitting=False)
    parser.add_argument(
        "--on-invalid", default="error", choices=["error", "skip"],
        help="a variant that cannot be scored stops the run before any scoring (error, the default), or is listed "
        "in the rejects table with its reason (skip)",
    )  # fmt: skip
    parser.add_argument(
        "--rejects", type=Path, help="rejects table (TSV) to write (default: beside the output, OUTPUT.rejects.tsv)"
    )
    parser.add_argument(
        "--allowed-ambiguity", default="N", help="IUPAC ambiguity codes accepted in ALT alleles (default: N)"
    )
    add_variant_scoring_arguments(parser)
    parser.add_argument(
        "--pooling", default="mean", choices=["mean", "max", "cls"], help=f"{POOLING_HELP}, of each variant window"
    )
    parser.add_argument("--figures", type=Path, help="also write run figures (timings, tokens) as JSON here")
    parser.add_argument(
        "--cache", type=Path, help="result cache directory: reuse the scores of variants earlier runs scored alike"
    )
    parser.add_argument("--cache-max-gb", type=float, default=20.0, help="size cap of the result cache (GB)")


def add_variant_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """How variants are placed and scored (seqshard.io.variants.VariantSettings): shared by variants and serve."""
    from seqshard.engine.types import DEFAULT_STRANDS, VARIANT_TASK
    from seqshard.io.variants import STRANDS, VariantSettings

    default = VariantSettings()
    parser.add_argument(
        "--variant-window", type=int, default=default.window,
        help="variant_effect: reference bases of context around a DNA change, half on each side (clamped at ends)",
    )  # fmt: skip
    parser.add_argument(
        "--variant-flank", type=int, default=default.flank,
        help="variant_effect: bases each side of the change whose covering tokens the likelihood ratio scores",
    )  # fmt: skip
    parser.add_argument(
        "--strand", choices=list(STRANDS),
        help=f"DNA: both strands or the forward one (default: {DEFAULT_STRANDS[VARIANT_TASK]} for variant_effect, "
        f"{DEFAULT_STRANDS['embed']} for embeddings)",
    )  # fmt: skip
    parser.add_argument(
        "--max-variant-length", type=int, default=default.max_length,
        help="variant_effect: longest REF or ALT change scored, after trimming shared bases (longer: refused)",
    )  # fmt: skip
    parser.add_argument(
        "--wild-type-marginal", action="store_true",
        help="variant_effect, proteins: also the wild-type marginal (one unmasked pass)",
    )  # fmt: skip


def variant_settings(args: argparse.Namespace) -> VariantSettings:
    """The VariantSettings the variant arguments say (variants, serve)."""
    from seqshard.engine.types import DEFAULT_STRANDS, VARIANT_TASK
    from seqshard.io.variants import VariantSettings

    return VariantSettings(
        window=args.variant_window, flank=args.variant_flank, strand=args.strand or DEFAULT_STRANDS[VARIANT_TASK],
        max_length=args.max_variant_length, pooling=args.pooling, wild_type_marginal=args.wild_type_marginal,
    )  # fmt: skip


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """How each sequence is checked (seqshard.io.sequences): shared by embed, score and serve."""
    parser.add_argument(
        "--allowed-ambiguity", default="N", help="IUPAC ambiguity codes accepted in DNA/RNA (default: N)"
    )
    parser.add_argument(
        "--gaps",
        default="reject",
        choices=["reject", "remove"],
        help="alignment gaps ('-', '.') make a record invalid (reject, the default) or are removed (remove)",
    )
    parser.add_argument(
        "--internal-stops",
        default="reject",
        choices=["reject", "unknown"],
        help="a protein's '*' before its end makes it invalid (reject, the default) or reads as X (unknown); "
        "one terminal '*' is always stripped",
    )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """`seqshard serve`: the model arguments, then where to listen and the limits (defaults: ServeSettings)."""
    from dataclasses import MISSING, fields

    from seqshard.serve.settings import HOST_VARIABLE, ServeSettings

    default = {field.name: field.default for field in fields(ServeSettings) if field.default is not MISSING}
    add_model_arguments(parser)
    add_policy_arguments(parser)
    parser.add_argument("--head", type=Path, help="linear head directory: classification or property_prediction")
    parser.add_argument("--pooling", default="mean", choices=["mean", "max", "cls"], help=POOLING_HELP)
    add_layer_arguments(parser)
    add_variant_scoring_arguments(parser)
    parser.add_argument("--host", help=f"address to listen on (default: ${HOST_VARIABLE}, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default["port"], help="port of the JSON API")
    parser.add_argument(
        "--metrics-port", type=int, default=default["metrics_port"], help="Prometheus metrics; 0: no exporter"
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=default["max_wait_ms"], help="longest wait for a batch to fill"
    )
    parser.add_argument(
        "--max-queue", type=int, default=default["max_queue"], help="sequences queued or computing, then 503"
    )
    parser.add_argument(
        "--max-batch-sequences", type=int, default=default["max_batch_sequences"],
        help="sequences one /predict/batch request may hold (400 beyond)",
    )  # fmt: skip
    parser.add_argument(
        "--max-sequence-length", type=int, default=default["max_sequence_length"],
        help="characters one sequence may have (400 SEQUENCE_TOO_LONG beyond)",
    )  # fmt: skip
    parser.add_argument(
        "--rate-limit", type=int, default=default["rate_limit"], help="requests per minute per client; 0: none"
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=default["max_body_bytes"], help="size of a request's body (413 beyond)"
    )
    parser.add_argument(
        "--max-request-tokens", type=int, default=default["max_request_tokens"],
        help="model tokens one request may ask for, counted at admission (413 TOO_MANY_TOKENS beyond)",
    )  # fmt: skip
    parser.add_argument(
        "--max-header-bytes", type=int, default=default["max_header_bytes"], help="size of a request's head (431)"
    )
    parser.add_argument("--max-headers", type=int, default=default["max_headers"], help="headers per request (431)")
    parser.add_argument(
        "--header-timeout", type=float, default=default["header_timeout"],
        help="seconds from a request's first byte to the end of its headers (408)",
    )  # fmt: skip
    parser.add_argument(
        "--body-timeout", type=float, default=default["body_timeout"],
        help="seconds from the end of the headers to the end of the body (408)",
    )  # fmt: skip
    parser.add_argument(
        "--idle-timeout", type=float, default=default["idle_timeout"],
        help="seconds a connection may stay open with no request in progress",
    )  # fmt: skip
    parser.add_argument("--api-key-file", type=Path, help="require `Authorization: Bearer <key in this file>`")
    parser.add_argument(
        "--graceful-timeout", type=float, default=default["graceful_timeout"],
        help="seconds SIGTERM waits for requests in flight; those still running then get 503",
    )  # fmt: skip
    parser.add_argument("--access-log", action="store_true", help="log every request")


def task_settings(args: argparse.Namespace, task: str = "embed") -> TaskSettings:
    """The settings that shape the numbers, from the model arguments (embed, score, serve)."""
    from seqshard.engine.types import DEFAULT_STRANDS, TaskSettings

    layers = getattr(args, "layers", None)
    return TaskSettings(
        task=task,
        pooling=getattr(args, "pooling", "mean"),
        per_token=getattr(args, "per_token", False),
        long_sequences=args.long_sequences,
        window_length=args.window_length,
        window_overlap=args.window_overlap,
        max_tokens=args.max_tokens,
        head=str(args.head) if getattr(args, "head", None) else None,
        per_base=getattr(args, "per_base", False),
        layers=tuple(layers) if layers else None,
        strand=getattr(args, "strand", None) or DEFAULT_STRANDS["embed"],
    )


def run(args: argparse.Namespace) -> None:
    if args.command in ("embed", "score"):
        from seqshard.engine.driver import run_tasks
        from seqshard.engine.types import Hardware, RunFiles, Work
        from seqshard.io.interface import CLI
        from seqshard.io.sequences import InputPolicy
        from seqshard.runtime.cache import ResultCache
        from seqshard.runtime.storage import warm_up

        settings = task_settings(args, "embed" if args.command == "embed" else args.task)
        policy = InputPolicy(
            allowed_ambiguity=args.allowed_ambiguity, on_invalid=args.on_invalid, gaps=args.gaps,
            internal_stops=args.internal_stops, interface=CLI,
        )  # fmt: skip
        work = Work(args.model, args.checkpoint, (settings,), args.molecule, policy, seam_sample=args.seam_sample)
        hardware = Hardware(args.device, args.dtype, threads=args.threads, batch_tokens=args.batch_tokens).resolved()
        files = RunFiles(
            args.fasta, {settings.task: args.output}, rejects=args.rejects or args.output.with_suffix(".rejects.tsv"),
            figures=args.figures, warmup=warm_up([args.fasta, args.checkpoint, settings.head]),
        )  # fmt: skip
        cache = ResultCache(args.cache, int(args.cache_max_gb * 1e9)) if args.cache else None
        run_tasks(work, files, hardware, cache)
    elif args.command == "variants":
        run_variants_command(args)
    elif args.command == "serve":
        from seqshard.serve.app import run_server
        from seqshard.serve.settings import ServeSettings

        host = {"host": args.host} if args.host else {}  # else ServeSettings' default (environment or loopback)
        settings = ServeSettings(
            model=args.model, checkpoint=args.checkpoint, head=str(args.head) if args.head else None, **host,
            port=args.port, metrics_port=args.metrics_port or None, device=args.device, dtype=args.dtype,
            threads=args.threads, molecule=args.molecule, allowed_ambiguity=args.allowed_ambiguity, gaps=args.gaps,
            internal_stops=args.internal_stops,
            shaping=task_settings(args), variants=variant_settings(args), batch_tokens=args.batch_tokens,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue, max_batch_sequences=args.max_batch_sequences,
            max_sequence_length=args.max_sequence_length, rate_limit=args.rate_limit,
            max_body_bytes=args.max_body_bytes, max_request_tokens=args.max_request_tokens,
            max_header_bytes=args.max_header_bytes, max_headers=args.max_headers, header_timeout=args.header_timeout,
            body_timeout=args.body_timeout, idle_timeout=args.idle_timeout, api_key_file=args.api_key_file,
            graceful_timeout=args.graceful_timeout,
        )  # fmt: skip
        settings.api_key()  # an unreadable or empty key file stops here, before anything starts
        run_server(settings, access_log=args.access_log)
    elif args.command == "predict":
        from seqshard.client import predict_fasta

        api_key = args.api_key_file.read_text(encoding="utf-8").strip() if args.api_key_file else None
        rows = predict_fasta(
            args.url, args.fasta, args.output, task_type=args.task_type, molecule=args.molecule, api_key=api_key,
            batch_size=args.batch_size, concurrency=args.concurrency,
        )  # fmt: skip
        logging.getLogger("seqshard").info("wrote %d rows to %s", rows, args.output)
    elif args.command == "upload":
        from seqshard.runtime.storage import upload_directory

        sent = upload_directory(args.directory, args.url)
        logging.getLogger("seqshard").info("uploaded %d bytes from %s to %s", sent, args.directory, args.url)
    elif args.command == "fetch":
        from seqshard.runtime.storage import fetch

        print(fetch(args.url).path)
    elif args.command == "demo-checkpoint":
        from seqshard.demo import write_demo

        path = write_demo(args.kind, args.output)
        logging.getLogger("seqshard").info("wrote random-weight demo checkpoint to %s", path)


def run_variants_command(args: argparse.Namespace) -> None:
    """`seqshard variants`: one variant set through the workflow's pack, score and merge, in this process."""
    from seqshard.engine.types import VARIANT_TASK, Hardware, RunFiles, VariantWork
    from seqshard.engine.variants import run_variants
    from seqshard.io.interface import CLI
    from seqshard.io.sequences import InputPolicy
    from seqshard.plan.variants import VariantSetInput
    from seqshard.runtime.cache import ResultCache
    from seqshard.runtime.storage import warm_up

    if args.vcf is not None and args.reference is None:
        raise ValueError("--vcf needs --reference: the FASTA the variants were called on")
    if args.mutations is not None and args.fasta is None:
        raise ValueError("--mutations needs --fasta: the proteins the mutations refer to")
    kind, variants, sequences = (
        ("vcf", args.vcf, args.reference) if args.vcf is not None else ("mutations", args.mutations, args.fasta)
    )
    settings = variant_settings(args)
    policy = InputPolicy(allowed_ambiguity=args.allowed_ambiguity, on_invalid=args.on_invalid, interface=CLI)
    work = VariantWork(args.model, args.checkpoint, settings, policy)
    hardware = Hardware(args.device, args.dtype, threads=args.threads, batch_tokens=args.batch_tokens).resolved()
    files = RunFiles(
        Path(variants), {VARIANT_TASK: args.output}, rejects=args.rejects or args.output.with_suffix(".rejects.tsv"),
        figures=args.figures, warmup=warm_up([variants, sequences, args.checkpoint]),
    )  # fmt: skip
    cache = ResultCache(args.cache, int(args.cache_max_gb * 1e9)) if args.cache else None
    run_variants(work, VariantSetInput("variants", kind, str(variants), str(sequences)), files, hardware, cache)


def main(argv: list[str] | None = None) -> int:
    args = create_parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    try:
        run(args)
    except EXPECTED_ERRORS as error:  # ServerError and httpx's errors are among these
        log_failure(error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
