"""Variant effects: the batched path against a slow reference (one window, one masked token, one plain forward at a
time), its symmetries, the reading of VCF/BCF and references, and every kind of bad variant with its outcome.

The reference implementation below is written from the definitions in the README ("Variant effects"), not from
seqshard's code: it trims REF/ALT, cuts the windows, tokenizes each with the tokenizer's own offsets, masks each
covering token alone and runs the model's masked-LM class forward on that single input, unpadded.
"""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pysam
import pytest
import torch

from seqshard.cli import main
from seqshard.engine.types import Hardware, RunFiles, VariantWork
from seqshard.engine.variants import run_variants
from seqshard.io.parquet import read_provenance
from seqshard.io.sequences import InputPolicy
from seqshard.io.variants import VariantSettings, reverse_complement
from seqshard.models.dnabert2 import load_dnabert2_masked_lm
from seqshard.models.dnabert2 import write_demo_checkpoint as write_dnabert2
from seqshard.models.lucaone import LucaOneTokenizer, load_lucaone_masked_lm
from seqshard.models.lucaone import write_demo_checkpoint as write_lucaone
from seqshard.plan.variants import VariantSetInput

WINDOW, FLANK = 64, 3
CPU = Hardware("cpu", "fp32", batch_tokens=1536)  # small batches: many of them, padded, in several widths
SCORES = ("llr", "embedding_cosine", "embedding_l2", "change_cosine", "change_l2")


@pytest.fixture(autouse=True)
def restore_logging():
    """`main()` points the root logger at the test's captured stderr; later tests must not log into a closed one."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from seqshard.demo import write_demo

    root = tmp_path_factory.mktemp("variant-checkpoints")
    return {
        "dnabert2": write_dnabert2(root / "dnabert2"),
        "lucaone": write_lucaone(root / "lucaone"),
        "nucleotide_transformer": write_demo("nt-demo", root / "nucleotide_transformer"),
        "esm2": write_demo("esm2-demo", root / "esm2"),
    }


def random_dna(n: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


def write_fasta(path: Path, contigs: dict[str, str]) -> Path:
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in contigs.items()))
    return path


def write_vcf(path: Path, contigs: dict[str, str], records: list[tuple]) -> Path:
    """records: (chrom, pos, id, ref, alt) with alt possibly 'A,C'."""
    header = ["##fileformat=VCFv4.2", *(f"##contig=<ID={n},length={len(s)}>" for n, s in contigs.items()),
              "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]  # fmt: skip
    lines = [f"{c}\t{p}\t{i}\t{r}\t{a}\t.\tPASS\t." for c, p, i, r, a in records]
    path.write_text("\n".join(header + lines) + "\n")
    return path


def score(checkpoint, architecture, vcf, reference, out, settings=None, on_invalid="skip"):
    work = VariantWork(architecture, str(checkpoint), settings or VariantSettings(window=WINDOW, flank=FLANK),
                       InputPolicy(on_invalid=on_invalid))  # fmt: skip
    run_variants(work, VariantSetInput("set", "vcf", str(vcf), str(reference)),
                 RunFiles(Path(vcf), {"variant_effect": out}), CPU)  # fmt: skip
    return pd.read_parquet(out), pd.read_csv(out.with_suffix(".rejects.tsv"), sep="\t")


# --- the slow reference ---------------------------------------------------------------------------------------


def transformers_esm(checkpoint: Path) -> torch.nn.Module:
    """The ESM family's masked LM as transformers builds it from the published layout: the plain forward."""
    from transformers import EsmForMaskedLM

    return EsmForMaskedLM.from_pretrained(checkpoint, attn_implementation="eager").eval()


class Slow:
    """One model, scored the plain way: no batching, no padding, one masked token per forward."""

    def __init__(self, architecture: str, checkpoint: Path) -> None:
        self.architecture = architecture
        if architecture == "dnabert2":
            from seqshard.models.dnabert2 import DNABERT2Tokenizer

            self.model = load_dnabert2_masked_lm(checkpoint)
            self.tokenizer = DNABERT2Tokenizer.from_dir(checkpoint)
        elif architecture == "lucaone":
            self.model = load_lucaone_masked_lm(checkpoint)
            self.tokenizer = LucaOneTokenizer("dna")
        else:  # the Nucleotide Transformer: transformers' own EsmForMaskedLM, seqshard's tokenizer
            from seqshard.models.nucleotide_transformer import load_nucleotide_transformer

            self.model = transformers_esm(checkpoint)
            self.tokenizer = load_nucleotide_transformer(str(checkpoint)).tokenizer

    def logits_and_hidden(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        tensor = torch.tensor([ids])
        with torch.inference_mode():
            if self.architecture == "dnabert2":
                hidden = self.model.bert(tensor)
                return self.model.cls(hidden)[0], hidden[0]
            if self.architecture == "lucaone":
                hidden = self.model.lucaone(tensor, None, 0)
                return self.model.lm_head(hidden)[0], hidden[0]
            hidden = self.model.esm(tensor).last_hidden_state
            return self.model.lm_head(hidden)[0], hidden[0]

    def allele(self, window: str, start: int, stop: int) -> tuple[float, np.ndarray, np.ndarray, int]:
        """log-likelihood of the covering tokens, mean-pooled embedding, mean of the covering tokens' states."""
        ids, offsets = self.tokenizer.encode_with_offsets(window)
        low, high = max(0, start - FLANK), min(len(window), stop + FLANK)
        if low >= high:
            low, high = max(0, start - 1), min(len(window), start + 1)
        covering = [t for t, (b, e) in enumerate(offsets) if e > b and b < high and e > low]
        total = 0.0
        for t in covering:
            masked = list(ids)
            masked[t] = self.tokenizer.mask_id
            logits, _ = self.logits_and_hidden(masked)
            total += torch.log_softmax(logits[t], -1)[ids[t]].item()
        _, hidden = self.logits_and_hidden(ids)
        before, after = self.tokenizer.frame  # [CLS] ... [SEP], or [CLS] ... without an end token
        own = hidden[before : len(ids) - after]
        return total, own.mean(0).numpy(), hidden[covering].mean(0).numpy(), len(covering)

    def variant(self, contig: str, pos: int, ref: str, alt: str) -> dict[str, float]:
        prefix = 0
        while prefix < min(len(ref), len(alt)) and ref[prefix] == alt[prefix]:
            prefix += 1
        r, a = ref[prefix:], alt[prefix:]
        suffix = 0
        while suffix < min(len(r), len(a)) and r[-1 - suffix] == a[-1 - suffix]:
            suffix += 1
        r, a = r[: len(r) - suffix], a[: len(a) - suffix]
        q = pos - 1 + prefix
        half = WINDOW // 2
        room_left, room_right = q, len(contig) - q - len(r)
        left = min(room_left, half + max(0, half - room_right))
        right = min(room_right, half + max(0, half - room_left))
        flank_left, flank_right = contig[q - left : q], contig[q + len(r) : q + len(r) + right]
        result: dict[str, float] = {"window_start": q - left, "window_end": q + len(r) + right}
        strands = {}
        for strand in ("forward", "reverse"):
            if strand == "forward":
                before, after, alleles = flank_left, flank_right, (r, a)
            else:
                before, after = reverse_complement(flank_right), reverse_complement(flank_left)
                alleles = (reverse_complement(r), reverse_complement(a))
            (lr, er, cr, nr), (la, ea, ca, na) = (
                self.allele(before + x + after, len(before), len(before) + len(x)) for x in alleles
            )
            strands[strand] = {
                "llr": la - lr,
                "embedding_cosine": 1 - float(np.dot(er, ea) / np.linalg.norm(er) / np.linalg.norm(ea)),
                "embedding_l2": float(np.linalg.norm(er - ea)),
                "change_cosine": 1 - float(np.dot(cr, ca) / np.linalg.norm(cr) / np.linalg.norm(ca)),
                "change_l2": float(np.linalg.norm(cr - ca)),
            }
            if strand == "forward":
                result.update(n_ref_tokens=nr, n_alt_tokens=na)
        for name in SCORES:
            result[f"{name}_forward"] = strands["forward"][name]
            result[f"{name}_reverse"] = strands["reverse"][name]
            result[name] = (strands["forward"][name] + strands["reverse"][name]) / 2
        return result


def exactness_case(tmp_path: Path) -> tuple[dict[str, str], list[tuple]]:
    """Two contigs and variants of every kind, at both ends of a contig and in the middle."""
    one, two = random_dna(300, 11), random_dna(150, 12)
    records = [
        ("c1", 1, "snv_first_base", one[0], "ACGT".replace(one[0], "")[0]),
        ("c1", 40, "snv", one[39], "ACGT".replace(one[39], "")[1]),
        ("c1", 60, "multi", one[59], ",".join(b for b in "ACGT" if b != one[59])),  # ALTs share the REF window
        (
            "c1",
            100,
            "mnv",
            one[99:102],
            reverse_complement(one[99:102])
            if one[99:102] != reverse_complement(one[99:102])
            else "AAA"
            if one[99:102] != "AAA"
            else "CCC",
        ),
        ("c1", 150, "insertion", one[149], one[149] + "GATTACA"),
        ("c1", 200, "deletion", one[199:206], one[199]),
        ("c1", 2, "deletion_at_start", one[1:4], one[1]),
        ("c1", 300, "snv_last_base", one[299], "ACGT".replace(one[299], "")[2]),
        ("c1", 296, "deletion_at_end", one[295:300], one[295]),
        ("c2", 75, "complex", two[74:78], "TT"),
        ("c2", 149, "insertion_near_end", two[148], two[148] + "CC"),
    ]
    return {"c1": one, "c2": two}, records


@pytest.mark.parametrize("architecture", ["dnabert2", "lucaone", "nucleotide_transformer"])
def test_batched_scores_equal_the_slow_reference(checkpoints, tmp_path, architecture):
    contigs, records = exactness_case(tmp_path)
    reference = write_fasta(tmp_path / "ref.fa", contigs)
    vcf = write_vcf(tmp_path / "calls.vcf", contigs, records)
    rows, rejects = score(checkpoints[architecture], architecture, vcf, reference, tmp_path / "out.parquet")
    assert len(rejects) == 0
    expected_rows = [(c, p, i, r, alt) for c, p, i, r, a in records for alt in a.split(",")]
    assert len(rows) == len(expected_rows)
    assert list(zip(rows["chrom"], rows["pos"], rows["id"], rows["ref"], rows["alt"], strict=True)) == expected_rows
    slow = Slow(architecture, checkpoints[architecture])
    retokenized = 0
    for row in rows.itertuples():
        expected = slow.variant(contigs[row.chrom], row.pos, row.ref, row.alt)
        for name, value in expected.items():
            assert getattr(row, name) == pytest.approx(value, abs=1e-5), (row.id, name)
        retokenized += row.n_ref_tokens != row.n_alt_tokens
    if architecture == "dnabert2":  # BPE: alleles of equal length that tokenize into different numbers of tokens
        assert rows.loc[rows["ref"].str.len() == rows["alt"].str.len()].eval("n_ref_tokens != n_alt_tokens").any()
    assert (rows["window_end"] - rows["window_start"] <= WINDOW + 7).all()
    assert rows.loc[rows["id"] == "snv_first_base", "window_start"].item() == 0
    assert rows.loc[rows["id"] == "snv_last_base", "window_end"].item() == 300
    assert rows.loc[rows["id"] == "snv", ["window_start", "window_end"]].values.tolist() == [[39 - 32, 40 + 32]]


@pytest.mark.parametrize("architecture", ["lucaone", "esm2"])
def test_protein_masked_marginal_equals_the_slow_reference(checkpoints, tmp_path, architecture):
    proteins = {"P1": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "P2": "MADEEKLPPGWEKRMSRSSGRVYYFNHITNASQWERPSG"}
    write_fasta(tmp_path / "p.fa", proteins)
    table = tmp_path / "muts.tsv"
    rows = [("P1", "K2A"), ("P1", "K2R"), ("P1", "K2A:T3S"), ("P2", "W11F:N30G:Q33D"), ("P2", "A2A"), ("P1", "Q33E")]
    table.write_text("sequence_id\tmutations\tdms_score\n" + "".join(f"{i}\t{m}\t0.5\n" for i, m in rows))
    out = tmp_path / "out.parquet"
    work = VariantWork(architecture, str(checkpoints[architecture]), VariantSettings(wild_type_marginal=True),
                       InputPolicy(on_invalid="skip"))  # fmt: skip
    figures = run_variants(work, VariantSetInput("m", "mutations", str(table), str(tmp_path / "p.fa")),
                           RunFiles(table, {"variant_effect": out}), CPU)  # fmt: skip
    frame = pd.read_parquet(out)
    assert list(zip(frame["sequence_id"], frame["mutations"], strict=True)) == rows
    if architecture == "lucaone":
        model = load_lucaone_masked_lm(checkpoints["lucaone"])
        tokenizer = LucaOneTokenizer("protein")

        def backbone(ids: torch.Tensor) -> torch.Tensor:
            return model.lucaone(ids, None, 1)

    else:  # ESM-2: transformers' own EsmForMaskedLM on the published layout (token dropout included)
        from seqshard.models.esm2 import load_esm2

        model = transformers_esm(checkpoints["esm2"])
        tokenizer = load_esm2(str(checkpoints["esm2"])).tokenizer

        def backbone(ids: torch.Tensor) -> torch.Tensor:
            return model.esm(ids).last_hidden_state

    def forward(ids):
        with torch.inference_mode():
            hidden = backbone(torch.tensor([ids]))
            return torch.log_softmax(model.lm_head(hidden)[0], -1), hidden[0]

    for row in frame.itertuples():
        sequence = proteins[row.sequence_id]
        ids = tokenizer.encode(sequence)
        wild_lp, wild_hidden = forward(ids)
        mutated = list(sequence)
        masked_total = wild_total = 0.0
        positions = []
        for mutation in row.mutations.split(":"):
            wt, position, mt = mutation[0], int(mutation[1:-1]), mutation[-1]
            masked = list(ids)
            masked[position] = tokenizer.mask_id
            lp, _ = forward(masked)
            a, b = tokenizer.encode(wt)[1], tokenizer.encode(mt)[1]
            masked_total += (lp[position, b] - lp[position, a]).item()
            wild_total += (wild_lp[position, b] - wild_lp[position, a]).item()
            mutated[position - 1] = mt
            positions.append(position)
        _, mutant_hidden = forward(tokenizer.encode("".join(mutated)))
        assert row.masked_marginal == pytest.approx(masked_total, abs=1e-5)
        assert row.wild_type_marginal == pytest.approx(wild_total, abs=1e-5)
        w, m = wild_hidden[1:-1].mean(0).numpy(), mutant_hidden[1:-1].mean(0).numpy()
        assert row.embedding_l2 == pytest.approx(float(np.linalg.norm(w - m)), abs=1e-5)
        cw, cm = wild_hidden[positions].mean(0).numpy(), mutant_hidden[positions].mean(0).numpy()
        assert row.change_cosine == pytest.approx(
            1 - float(cw @ cm / np.linalg.norm(cw) / np.linalg.norm(cm)), abs=1e-5
        )
        assert row.n_mutations == len(positions)
    assert frame.loc[frame["mutations"] == "A2A", "masked_marginal"].item() == 0.0
    # One masked pass per distinct (protein, position): K2A, K2R and K2A:T3S share position 2.
    assert figures.extra["n_masked_inputs"] == len({(i, m[1:-1]) for i, ms in rows for m in ms.split(":")})


# --- symmetries ---------------------------------------------------------------------------------------------


def far_apart_variants(contig: str) -> list[tuple[int, str, str]]:
    """(pos, ref, alt) far enough apart that no window holds two of them; no indel in a repeat (so that its
    placement is unambiguous on both strands)."""
    variants = []
    for index, kind in enumerate(["snv", "mnv", "ins", "del", "snv", "del", "ins"]):
        pos = 100 + index * 120
        while contig[pos - 2 : pos + 6].count(contig[pos]) > 1 or contig[pos - 1] == contig[pos]:
            pos += 1
        if kind == "snv":
            variants.append((pos, contig[pos - 1], "ACGT".replace(contig[pos - 1], "")[index % 3]))
        elif kind == "mnv":
            variants.append(
                (pos, contig[pos - 1 : pos + 1], "".join("ACGT".replace(b, "")[0] for b in contig[pos - 1 : pos + 1]))
            )
        elif kind == "ins":
            inserted = "".join(b for b in "GCAT" if b not in contig[pos - 1 : pos + 1])[:2] or "G"
            variants.append((pos, contig[pos - 1], contig[pos - 1] + inserted))
        else:
            variants.append((pos, contig[pos - 1 : pos + 3], contig[pos - 1]))
    return variants


def test_swapping_ref_and_alt_negates_the_likelihood_ratio(checkpoints, tmp_path):
    contig = random_dna(1000, 21)
    variants = far_apart_variants(contig)
    write_fasta(tmp_path / "ref.fa", {"c": contig})
    write_vcf(tmp_path / "ref.vcf", {"c": contig}, [("c", p, f"v{k}", r, a) for k, (p, r, a) in enumerate(variants)])
    # The ALT genome, and its VCF: each variant back to the reference allele, positions shifted by earlier indels.
    alt_genome, shift, back = [], 0, []
    cursor = 0
    for k, (pos, ref, alt) in enumerate(variants):
        alt_genome.append(contig[cursor : pos - 1])
        back.append(("c", pos + shift, f"v{k}", alt, ref))
        alt_genome.append(alt)
        cursor = pos - 1 + len(ref)
        shift += len(alt) - len(ref)
    alt_genome.append(contig[cursor:])
    alternative = "".join(alt_genome)
    write_fasta(tmp_path / "alt.fa", {"c": alternative})
    write_vcf(tmp_path / "alt.vcf", {"c": alternative}, back)
    forward, _ = score(
        checkpoints["dnabert2"], "dnabert2", tmp_path / "ref.vcf", tmp_path / "ref.fa", tmp_path / "f.parquet"
    )
    swapped, _ = score(
        checkpoints["dnabert2"], "dnabert2", tmp_path / "alt.vcf", tmp_path / "alt.fa", tmp_path / "s.parquet"
    )
    assert len(forward) == len(swapped) == len(variants)
    for name in ("llr", "llr_forward", "llr_reverse"):
        np.testing.assert_allclose(swapped[name], -forward[name], atol=1e-5)
    for name in ("embedding_cosine", "embedding_l2", "change_cosine", "change_l2"):
        np.testing.assert_allclose(swapped[name], forward[name], atol=1e-5)
    assert (forward["llr"].abs() > 1e-3).all()  # not trivially zero


def test_strand_averaged_scores_do_not_change_when_genome_and_variants_are_reverse_complemented(checkpoints, tmp_path):
    contig = random_dna(1000, 31)
    variants = far_apart_variants(contig)
    variants.append((1, contig[0], "ACGT".replace(contig[0], "")[0]))  # at the contig's ends too
    variants.append((1000, contig[-1], "ACGT".replace(contig[-1], "")[0]))
    flipped = reverse_complement(contig)
    mirrored = []
    for k, (pos, ref, alt) in enumerate(variants):
        start = pos - 1
        if len(ref) == len(alt):  # SNV, MNV: the same bases, reverse-complemented, at the mirrored position
            mirrored.append(("c", len(contig) - start - len(ref) + 1, f"v{k}", reverse_complement(ref),
                             reverse_complement(alt)))  # fmt: skip
        else:  # indel with its anchor base first: mirrored, the anchor is the base before the changed ones
            changed_ref, changed_alt = ref[1:], alt[1:]
            mirror = len(contig) - (start + 1) - len(changed_ref)  # 0-based start of the change, flipped
            anchor = flipped[mirror - 1]
            mirrored.append(("c", mirror, f"v{k}", anchor + reverse_complement(changed_ref),
                             anchor + reverse_complement(changed_alt)))  # fmt: skip
    write_fasta(tmp_path / "ref.fa", {"c": contig})
    write_vcf(tmp_path / "ref.vcf", {"c": contig}, [("c", p, f"v{k}", r, a) for k, (p, r, a) in enumerate(variants)])
    write_fasta(tmp_path / "rc.fa", {"c": flipped})
    write_vcf(tmp_path / "rc.vcf", {"c": flipped}, sorted(mirrored, key=lambda record: record[1]))
    original, _ = score(
        checkpoints["dnabert2"], "dnabert2", tmp_path / "ref.vcf", tmp_path / "ref.fa", tmp_path / "o.parquet"
    )
    reverse, rejects = score(
        checkpoints["dnabert2"], "dnabert2", tmp_path / "rc.vcf", tmp_path / "rc.fa", tmp_path / "r.parquet"
    )
    assert len(rejects) == 0
    reverse = reverse.set_index("id").loc[original["id"]].reset_index()
    for name in SCORES:
        np.testing.assert_allclose(reverse[name], original[name], atol=1e-5)
        np.testing.assert_allclose(reverse[f"{name}_forward"], original[f"{name}_reverse"], atol=1e-5)
    assert not np.allclose(original["llr_forward"], original["llr_reverse"])  # the strands do differ


# --- reading: formats, references, indexes --------------------------------------------------------------------


def test_bcf_bgzipped_vcf_and_bgzipped_reference_give_the_same_rows(checkpoints, tmp_path):
    contigs, records = exactness_case(tmp_path)
    write_fasta(tmp_path / "ref.fa", contigs)
    vcf = write_vcf(tmp_path / "calls.vcf", contigs, records)
    plain, _ = score(checkpoints["dnabert2"], "dnabert2", vcf, tmp_path / "ref.fa", tmp_path / "plain.parquet")
    assert (tmp_path / "ref.fa.fai").is_file()  # built next to the FASTA
    pysam.tabix_compress(str(vcf), str(tmp_path / "calls.vcf.gz"))
    with pysam.VariantFile(str(vcf)) as source, pysam.VariantFile(str(tmp_path / "calls.bcf"), "wb",
                                                                   header=source.header) as sink:  # fmt: skip
        for record in source:
            sink.write(record)
    pysam.tabix_compress(str(tmp_path / "ref.fa"), str(tmp_path / "ref.fa.gz"))
    for name, calls, genome in [("gz", "calls.vcf.gz", "ref.fa"), ("bcf", "calls.bcf", "ref.fa.gz")]:
        rows, _ = score(checkpoints["dnabert2"], "dnabert2", tmp_path / calls, tmp_path / genome,
                        tmp_path / f"{name}.parquet")  # fmt: skip
        pd.testing.assert_frame_equal(rows, plain)
    assert (tmp_path / "ref.fa.gz.gzi").is_file() and (tmp_path / "ref.fa.gz.fai").is_file()


def error_lines(capsys) -> list[str]:
    """The command's error lines on the terminal; the last line of its output must be the one error."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.rstrip("\n").splitlines()
    errors = [line for line in lines if " ERROR seqshard: " in line]
    assert errors and lines[-1] == errors[-1]
    return errors


def test_reference_compressed_with_plain_gzip_is_one_line_naming_bgzip(checkpoints, tmp_path, capsys):
    contigs, records = exactness_case(tmp_path)
    with gzip.open(tmp_path / "ref.fa.gz", "wt") as handle:
        handle.write("".join(f">{n}\n{s}\n" for n, s in contigs.items()))
    write_vcf(tmp_path / "calls.vcf", contigs, records)
    code = main(["variants", "--model", "dnabert2", "--checkpoint", str(checkpoints["dnabert2"]), "--vcf",
                 str(tmp_path / "calls.vcf"), "--reference", str(tmp_path / "ref.fa.gz"), "-o",
                 str(tmp_path / "out.parquet"), "--device", "cpu"])  # fmt: skip
    assert code == 1
    errors = error_lines(capsys)
    assert len(errors) == 1
    assert "gzip-compressed" in errors[0] and "bgzip" in errors[0] and "ref.fa.gz" in errors[0]


def test_an_index_that_cannot_be_written_next_to_the_reference_is_built_for_the_run_and_said(
    checkpoints, tmp_path, caplog
):
    contigs, records = exactness_case(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    write_fasta(locked / "ref.fa", contigs)
    write_vcf(tmp_path / "calls.vcf", contigs, records[:3])
    # Immutable: not even root may create a file in it (the test machines run as root).
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here")
    try:
        rows, _ = score(checkpoints["dnabert2"], "dnabert2", tmp_path / "calls.vcf", locked / "ref.fa",
                        tmp_path / "out.parquet")  # fmt: skip
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert len(rows) == 5 and not (locked / "ref.fa.fai").exists()
    warnings = [r.getMessage() for r in caplog.records if "cannot write its index" in r.getMessage()]
    assert len(warnings) == 1 and "samtools faidx" in warnings[0]


# --- bad variants: each with its declared outcome ----------------------------------------------------------------

BAD_DNA = [
    # (record as (pos, ref, alt) on contig "1" of the reference unless the chrom is given), expected reason
    (("1", 10, "ref_mismatch", "<REF+1>", "T"), "does not match the reference"),
    (("chr1", 10, "chr_style", "<REF>", "T"), "names it 1 (without 'chr')"),
    (("7", 10, "no_contig", "A", "T"), "contig 7 is not in the reference"),
    (("1", 20, "symbolic", "<REF>", "<DEL>"), "symbolic ALT <DEL>"),
    (("1", 30, "breakend", "<REF>", "G]1:100]"), "breakend ALT"),
    (("1", 40, "star", "<REF>", "*"), "ALT '*'"),
    (("1", 50, "no_alt", "<REF>", "."), "no ALT allele"),
    (
        ("1", 60, "too_long", "<REF>", "<REF>" + "A" * 60),
        "insertion of 60 bp is longer than max_variant_length (50 bp)",
    ),
    (("1", 70, "not_a_base", "<REF>", "X"), "not a DNA base"),
    (("1", 199, "past_end", "<REF3>", "A"), "runs past the contig's end"),
    (("1", 80, "no_change", "<REF>", "<REF>"), "ALT equals REF"),
]


def bad_dna_case(tmp_path: Path) -> tuple[Path, Path, list[tuple]]:
    contig = random_dna(200, 41)
    records = []
    for (chrom, pos, name, ref, alt), _ in BAD_DNA:
        base = contig[pos - 1]
        wrong = "ACGT".replace(base, "")[0]
        spell = {"<REF>": base, "<REF+1>": wrong, "<REF3>": (contig[pos - 1 : pos + 2] + "A")[:3]}
        ref_text = spell.get(ref, ref)
        alt_text = alt.replace("<REF>", base) if alt.startswith("<REF>") else spell.get(alt, alt)
        records.append((chrom, pos, name, ref_text, alt_text))
    records.append(("1", 90, "good", contig[89], "ACGT".replace(contig[89], "")[0]))
    reference = write_fasta(tmp_path / "ref.fa", {"1": contig})
    header = ["##fileformat=VCFv4.2", "##contig=<ID=1,length=200>",
              "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]  # fmt: skip
    lines = [f"{c}\t{p}\t{i}\t{r}\t{a}\t.\tPASS\t." for c, p, i, r, a in records]
    vcf = tmp_path / "bad.vcf"
    vcf.write_text("\n".join(header + lines) + "\n")
    return vcf, reference, records


def test_every_bad_variant_is_a_reject_with_its_reason_under_skip(checkpoints, tmp_path):
    vcf, reference, records = bad_dna_case(tmp_path)
    rows, rejects = score(checkpoints["dnabert2"], "dnabert2", vcf, reference, tmp_path / "out.parquet")
    assert list(rows["id"]) == ["good"]
    assert len(rows) + len(rejects) == len(records)
    assert list(rejects["record"]) == list(range(1, len(BAD_DNA) + 1))
    for (_, expected), reason, variant, record in zip(BAD_DNA, rejects["reason"], rejects["variant"], records[:-1],
                                                      strict=True):  # fmt: skip
        assert expected in reason, (record[2], reason)
        assert variant.startswith(f"{record[0]}:{record[1]} {record[2]} ")
    chr_style = rejects.loc[rejects["variant"].str.contains("chr_style"), "reason"].item()
    assert "chr1" in chr_style and "bcftools annotate --rename-chrs" in chr_style


@pytest.mark.parametrize("index", range(len(BAD_DNA)))
def test_each_bad_variant_is_one_line_naming_file_record_and_reason_under_error(checkpoints, tmp_path, capsys, index):
    vcf, reference, records = bad_dna_case(tmp_path)
    only = tmp_path / "one.vcf"
    lines = vcf.read_text().splitlines()
    only.write_text("\n".join([*lines[:3], lines[3 + index]]) + "\n")
    code = main(["variants", "--model", "dnabert2", "--checkpoint", str(checkpoints["dnabert2"]), "--vcf", str(only),
                 "--reference", str(reference), "-o", str(tmp_path / "out.parquet"), "--device", "cpu"])  # fmt: skip
    assert code == 1
    errors = error_lines(capsys)
    assert len(errors) == 1, errors
    chrom, pos, name, *_ = records[index]
    assert f"{only}: record 1 ({chrom}:{pos} {name} " in errors[0]
    assert BAD_DNA[index][1] in errors[0] and "--on-invalid skip" in errors[0]
    assert not (tmp_path / "out.parquet").exists()


BAD_PROTEIN = [
    ("P1", "A2G", "wild-type letter A does not match P1, which has K at 2"),
    ("P1", "K99A", "position 99 is past the end of P1 (10 residues)"),
    ("P9", "M1A", "sequence_id 'P9' is not in p.fa"),
    ("P1", "K2", "is not of the form A24G"),
    ("P1", "K2A:K2R", "position 2 is mutated twice"),
    ("P1", "K2@", "is not of the form A24G"),
    ("BAD", "M1A", "sequence BAD of p.fa was refused"),
    ("P1", "", "no mutation given"),
]


def test_every_bad_mutation_is_a_reject_with_its_reason(checkpoints, tmp_path):
    (tmp_path / "p.fa").write_text(">P1\nMKTAYIAKQR\n>BAD\nMK1T\n")
    table = tmp_path / "muts.tsv"
    table.write_text("sequence_id\tmutations\n" + "".join(f"{i}\t{m}\n" for i, m, _ in BAD_PROTEIN) + "P1\tK2A\n")
    out = tmp_path / "out.parquet"
    code = main(["variants", "--model", "lucaone", "--checkpoint", str(checkpoints["lucaone"]), "--mutations",
                 str(table), "--fasta", str(tmp_path / "p.fa"), "-o", str(out), "--device", "cpu",
                 "--on-invalid", "skip"])  # fmt: skip
    assert code == 0
    rows, rejects = pd.read_parquet(out), pd.read_csv(out.with_suffix(".rejects.tsv"), sep="\t", keep_default_na=False)
    assert list(rows["mutations"]) == ["K2A"] and len(rows) + len(rejects) == len(BAD_PROTEIN) + 1
    for (_, _, expected), reason in zip(BAD_PROTEIN, rejects["reason"], strict=True):
        assert expected in reason


def test_command_line_writes_rows_rejects_and_provenance(checkpoints, tmp_path):
    contigs, records = exactness_case(tmp_path)
    write_fasta(tmp_path / "ref.fa", contigs)
    vcf = write_vcf(tmp_path / "calls.vcf", contigs, records[:4])
    out = tmp_path / "calls.parquet"
    code = main(["variants", "--model", "dnabert2", "--checkpoint", str(checkpoints["dnabert2"]), "--vcf", str(vcf),
                 "--reference", str(tmp_path / "ref.fa"), "-o", str(out), "--device", "cpu", "--strand", "forward",
                 "--variant-window", "32", "--variant-flank", "0", "--rejects", str(tmp_path / "r.tsv")])  # fmt: skip
    assert code == 0
    rows = pq.read_table(out)
    assert rows.num_rows == 6 and rows.column("llr_reverse").null_count == 6
    assert rows.column("llr").to_pylist() == rows.column("llr_forward").to_pylist()
    provenance = read_provenance(out)
    assert provenance["task"] == "variant_effect" and provenance["strand"] == "forward"
    assert provenance["variant_window"] == "32" and provenance["variant_flank"] == "0"
    assert provenance["checkpoint_digest"].startswith("sha256:") and provenance["molecule"] == "dna"
    assert (tmp_path / "r.tsv").read_text() == "file\trecord\tvariant\treason\n"
    # With no flank an SNV scores the tokens holding the changed base: one character for LucaOne, here BPE tokens.
    assert (rows.column("n_ref_tokens").to_numpy() >= 1).all()


# --- real files no one here wrote: bcftools' test VCFs and references (tests/data/bcftools/README.md) ----------

BCFTOOLS = Path(__file__).parent / "data" / "bcftools"


def variants_in(vcf: Path) -> list[tuple[int, int]]:
    """(record, allele) of every variant of a VCF, counted with pysam: one per ALT, one for a record without ALT."""
    with pysam.VariantFile(str(vcf)) as calls:
        return [(n, a) for n, call in enumerate(calls, 1) for a in range(1, len(call.alts or (".",)) + 1)]


def real(checkpoints, tmp_path, vcf: str, reference: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    for name in (vcf, reference):
        (tmp_path / name).write_bytes((BCFTOOLS / name).read_bytes())
    rows, rejects = score(checkpoints["dnabert2"], "dnabert2", tmp_path / vcf, tmp_path / reference,
                          tmp_path / "out.parquet", VariantSettings())  # fmt: skip
    every = variants_in(tmp_path / vcf)
    assert len(rows) + len(rejects) == len(every)  # every variant accounted for, once
    assert set(rows["record"]) | set(rejects["record"]) == {record for record, _ in every}
    assert rows[["record", "allele"]].apply(tuple, axis=1).tolist() == sorted(
        rows[["record", "allele"]].apply(tuple, axis=1).tolist()
    )  # input order
    return rows, rejects


def test_bcftools_norm_vcf_runs_clean_with_each_refused_record_named(checkpoints, tmp_path):
    rows, rejects = real(checkpoints, tmp_path, "norm.vcf", "norm.fa")
    assert (len(rows), len(rejects)) == (34, 4)
    assert rejects[["record", "variant"]].values.tolist() == [
        [2, "2:1 . GGGCGTCTCATAGCTGGAGC...(192 bp)>ACGT"],
        [9, "20:59 . AG>."],
        [21, "4:25 . T>*"],
        [22, "4:37 . C>I"],
    ]
    assert [reason.split(":")[0] for reason in rejects["reason"]] == [
        "change of 191 bp to 3 bp is longer than max_variant_length (50 bp)",
        "no ALT allele (ALT is '.')",
        "ALT '*' (the site is deleted by an overlapping upstream deletion)",
        "ALT I has 'I'",
    ]
    # 20:273 CA21>CA23 and 20:278 A17>A19 are one insertion of AA at the end of a poly-A run, written two ways:
    # one unit, the same scores.
    same = rows[rows["pos"].isin([273, 278]) & (rows["alt"].str.len() - rows["ref"].str.len() == 2)]
    assert len(same) == 2 and same["llr"].nunique() == 1
    assert np.isfinite(rows["llr"]).all() and (rows["embedding_cosine"] >= 0).all()


def test_bcftools_consensus_reference_with_uneven_lines_is_one_line_naming_record_and_line(
    checkpoints, tmp_path, capsys
):
    for name in ("consensus.vcf", "consensus.fa"):
        (tmp_path / name).write_bytes((BCFTOOLS / name).read_bytes())
    code = main(["variants", "--model", "dnabert2", "--checkpoint", str(checkpoints["dnabert2"]), "--vcf",
                 str(tmp_path / "consensus.vcf"), "--reference", str(tmp_path / "consensus.fa"), "-o",
                 str(tmp_path / "out.parquet"), "--device", "cpu", "--on-invalid", "skip"])  # fmt: skip
    assert code == 1
    (error,) = error_lines(capsys)
    assert "consensus.fa: htslib cannot index it: the lines of record 1:2-501 differ in length (line 3)" in error


def test_bcftools_consensus_vcf_on_its_rewrapped_reference_names_the_region_contig(checkpoints, tmp_path):
    records = (BCFTOOLS / "consensus.fa").read_text().split(">")[1:]
    rewrapped = "".join(f">{r.splitlines()[0]}\n{''.join(r.splitlines()[1:])}\n" for r in records)
    (tmp_path / "consensus.vcf").write_bytes((BCFTOOLS / "consensus.vcf").read_bytes())
    (tmp_path / "wrapped.fa").write_text(rewrapped)
    rows, rejects = score(checkpoints["dnabert2"], "dnabert2", tmp_path / "consensus.vcf", tmp_path / "wrapped.fa",
                          tmp_path / "out.parquet", VariantSettings())  # fmt: skip
    assert len(rows) + len(rejects) == len(variants_in(tmp_path / "consensus.vcf")) == 14
    assert rows["alt"].tolist() == ["aa", "t", "gacgtacgt", "c", "a"]  # lower case, as written; scored upper-cased
    region = rejects[rejects["reason"].str.contains("which holds 1:2-501: a region of it")]
    assert len(region) == 8 and set(region["variant"].str.split(":").str[0]) == {"1"}
    assert rejects.loc[~rejects.index.isin(region.index), "reason"].tolist() == [
        "symbolic ALT <DEL>: only alleles spelled out as bases can be scored"
    ]


def test_samtools_mpileup_vcf_on_its_reference_scores_every_base_allele_and_names_the_rest(checkpoints, tmp_path):
    rows, rejects = real(checkpoints, tmp_path, "mpileup.vcf.gz", "mpileup.ref.fa")
    assert (len(rows), len(rejects)) == (107, 4110)
    reasons = rejects["reason"].str.replace(r"\d+", "N", regex=True).str.replace(r"has [ACGT] at", "has B at",
                                                                                  regex=True)  # fmt: skip
    assert reasons.value_counts().to_dict() == {
        "symbolic ALT <X>: only alleles spelled out as bases can be scored": 4094,
        "ALT X has 'X': not a DNA base (accepted: ACGNT)": 7,
        "REF A does not match the reference, which has B at position N": 9,
    }
    # The file's first records say REF A where the reference has AAGCTTC: records 3 to 7 disagree with it.
    mismatched = rejects[rejects["reason"].str.startswith("REF A does not match")]
    assert sorted(set(mismatched["record"])) == [3, 4, 5, 6, 7]
    assert rows["ref"].str.len().max() > 1 and (rows["alt"].str.len() != rows["ref"].str.len()).any()  # indels too


def test_a_window_longer_than_the_model_takes_is_a_reject_and_the_others_are_scored(checkpoints, tmp_path):
    """DNABERT-2 gives each N its own token: a window over a scaffold gap can exceed 512 tokens."""
    contig = random_dna(400, 51) + "N" * 700 + random_dna(400, 52)
    reference = write_fasta(tmp_path / "ref.fa", {"c": contig})
    records = [("c", 200, "before_gap", contig[199], "ACGT".replace(contig[199], "")[0]),
               ("c", 1500, "after_gap", contig[1499], "ACGT".replace(contig[1499], "")[0])]  # fmt: skip
    vcf = write_vcf(tmp_path / "calls.vcf", {"c": contig}, records)
    rows, rejects = score(checkpoints["dnabert2"], "dnabert2", vcf, reference, tmp_path / "out.parquet",
                          VariantSettings(window=1200))  # fmt: skip
    assert len(rows) == 0 and len(rejects) == 2  # both windows reach into the gap
    assert rejects["reason"].str.contains(r"tokenizes to \d+ tokens, more than the model's 512").all()
    rows, rejects = score(checkpoints["dnabert2"], "dnabert2", vcf, reference, tmp_path / "out2.parquet",
                          VariantSettings(window=300))  # fmt: skip
    assert list(rows["id"]) == ["before_gap", "after_gap"] and len(rejects) == 0
    code = main(["variants", "--model", "dnabert2", "--checkpoint", str(checkpoints["dnabert2"]), "--vcf", str(vcf),
                 "--reference", str(reference), "-o", str(tmp_path / "out3.parquet"), "--device", "cpu",
                 "--variant-window", "1200"])  # fmt: skip
    assert code == 1 and not (tmp_path / "out3.parquet").exists()


def test_the_result_cache_scores_each_variant_once_across_runs(checkpoints, tmp_path):
    """A grown VCF scores only its new variants; the rows are those a run without the cache writes."""
    contigs, records = exactness_case(tmp_path)
    reference = write_fasta(tmp_path / "ref.fa", contigs)
    first = write_vcf(tmp_path / "first.vcf", contigs, records[:6])
    grown = write_vcf(tmp_path / "grown.vcf", contigs, records)

    def run(vcf: Path, out: str, cache: Path | None) -> tuple[pd.DataFrame, dict]:
        figures = tmp_path / f"{out}.json"
        arguments = ["variants", "--model", "dnabert2", "--checkpoint", str(checkpoints["dnabert2"]), "--vcf",
                     str(vcf), "--reference", str(reference), "-o", str(tmp_path / out), "--device", "cpu",
                     "--figures", str(figures), "--batch-tokens", "1536", "--variant-window", str(WINDOW),
                     "--variant-flank", str(FLANK)]  # fmt: skip
        assert main(arguments + (["--cache", str(cache)] if cache else [])) == 0
        return pd.read_parquet(tmp_path / out), json.loads(figures.read_text())

    cache = tmp_path / "cache"
    _, cold = run(first, "first.parquet", cache)
    cached, warm = run(grown, "grown.parquet", cache)
    plain, _ = run(grown, "plain.parquet", None)
    assert cold["n_cached"] == 0 and cold["n_records"] == cold["n_units"] == 8
    assert warm["n_records"] == warm["n_units"] == 13 and warm["n_cached"] == 8  # only the 5 new units computed
    pd.testing.assert_frame_equal(cached, plain, check_exact=False, atol=1e-6, rtol=0)
    _, again = run(grown, "again.parquet", cache)
    assert again["n_cached"] == 13 and again["n_computed_tokens"] == 0
