"""The `seqshard` command: the workflow's code paths, usable outside Snakemake and inside the containers."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from seqshard import __version__
from seqshard.logs import setup_logging


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqshard", description=__doc__)
    parser.add_argument("--version", action="version", version=f"seqshard {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at debug level")
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed every sequence of a FASTA file into a Parquet file")
    add_run_arguments(embed)
    embed.add_argument("--pooling", default="mean", choices=["mean", "max", "cls"])
    embed.add_argument("--per-token", action="store_true", help="also write every token's vector (float16)")

    score = commands.add_parser(
        "score", help="score sequences: mlm_score (pseudo-log-likelihood), classify or regress (fine-tuned head)"
    )
    add_run_arguments(score)
    score.add_argument("--task", required=True, choices=["mlm_score", "classify", "regress"])
    score.add_argument("--head", type=Path, help="linear head directory for classify/regress (README, 'Heads')")

    demo = commands.add_parser(
        "demo-checkpoint", help="write a small RANDOM-weight checkpoint (or head) in a published layout"
    )
    demo.add_argument("output", type=Path, help="directory to create")
    demo.add_argument(
        "--kind",
        default="dnabert2-demo",
        choices=["dnabert2-demo", "dnabert2-promoter-demo", "lucaone-demo", "lucaone-location-head-demo"],
    )
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by every task: input, output, model, long-sequence handling, device and speed."""
    parser.add_argument("fasta", type=Path, help="input FASTA, plain or gzip")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output Parquet file")
    parser.add_argument("--model", default="dnabert2", choices=["dnabert2", "lucaone"], help="model architecture")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory or hub id (owner/name)")
    parser.add_argument("--molecule", default="dna", choices=["dna", "rna", "protein"])
    parser.add_argument("--long-sequences", default="window", choices=["window", "truncate"])
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
    parser.add_argument(
        "--allowed-ambiguity", default="N", help="IUPAC ambiguity codes accepted in DNA/RNA (default: N)"
    )
    parser.add_argument("--figures", type=Path, help="also write run figures (timings, tokens) as JSON here")
    parser.add_argument(
        "--cache", type=Path, help="result cache directory: reuse results of earlier runs for the same sequences"
    )
    parser.add_argument("--cache-max-gb", type=float, default=20.0, help="size cap of the result cache (GB)")


def run(args: argparse.Namespace) -> None:
    if args.command in ("embed", "score"):
        from seqshard.cache import ResultCache
        from seqshard.inference import TaskSettings, run_task

        settings = TaskSettings(
            task="embed" if args.command == "embed" else args.task,
            pooling=getattr(args, "pooling", "mean"),
            per_token=getattr(args, "per_token", False),
            long_sequences=args.long_sequences,
            window_length=args.window_length,
            window_overlap=args.window_overlap,
            max_tokens=args.max_tokens,
            head=str(args.head) if getattr(args, "head", None) else None,
        )
        run_task(
            args.fasta,
            args.output,
            architecture=args.model,
            checkpoint=args.checkpoint,
            settings=settings,
            molecule=args.molecule,
            batch_tokens=args.batch_tokens,
            device=args.device,
            dtype=args.dtype,
            threads=args.threads,
            allowed_ambiguity=args.allowed_ambiguity,
            figures_out=args.figures,
            cache=ResultCache(args.cache, int(args.cache_max_gb * 1e9)) if args.cache else None,
        )
    elif args.command == "demo-checkpoint":
        from seqshard.demo import write_demo

        path = write_demo(args.kind, args.output)
        logging.getLogger("seqshard").info("wrote random-weight demo checkpoint to %s", path)


def main(argv: list[str] | None = None) -> int:
    args = create_parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    try:
        run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        logging.getLogger("seqshard").error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
