"""What a valid sequence is: each molecule's alphabet, the input policy the user declared, and the one check that
every entry point runs on a sequence (the FASTA reader, and through it `seqshard embed`, `seqshard predict` and the
workflow; and the HTTP server on each requested sequence).

`SequenceChecker.check` takes a sequence as its text (a FASTA record's sequence lines joined, or a request's
string) and returns the sequence as it will be scored (upper-cased, one terminal '*' stripped, gaps removed or
internal stops read as X when the policy says so) or the fault that refuses it. A fault's message has a `{where}`
placeholder: the FASTA reader fills in "at line L, column C", the server "at position P", so the same input gets
the same reason on every path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from seqshard.io.interface import PYTHON, Interface

Molecule = Literal["dna", "rna", "protein"]
OnInvalid = Literal["error", "skip"]
GapPolicy = Literal["reject", "remove"]
StopPolicy = Literal["reject", "unknown"]

# Letters each molecule type accepts without question (upper case; input is compared case-insensitively).
ALPHABETS: dict[str, frozenset[str]] = {
    "dna": frozenset("ACGT"),
    "rna": frozenset("ACGU"),
    # The 20 standard amino acids plus the extra letters protein language models such as LucaOne carry in
    # their vocabulary: X unknown, B/Z/J ambiguous pairs, U selenocysteine, O pyrrolysine.
    "protein": frozenset("ACDEFGHIKLMNPQRSTVWYXBZJUO"),
}
# IUPAC nucleotide ambiguity codes. Whether they are accepted is the user's declared choice
# (config key `allowed_ambiguity`); none of them is accepted by accident.
NUCLEOTIDE_AMBIGUITY = frozenset("NRYSWKMBDHV")
# Alignment gaps: '-' everywhere, '.' in A2M/A3M and Stockholm-derived files.
GAP_CHARACTERS = "-."
STOP = "*"
# Amino-acid letters that are no nucleotide or IUPAC code (X aside: some tools mask bases with it).
PROTEIN_ONLY = frozenset("EFIJLOPQZ")
WHITESPACE = " \t\r\v\f"
# Lines starting with ';' were comments in the original (Pearson) FASTA format; today's readers take them as sequence.
COMMENT = ";"


@dataclass(frozen=True)
class InputPolicy:
    """What the user declared about their input: which faults are errors and which odd-but-valid forms to accept.

    `on_invalid`: an invalid record stops the run (`error`) or becomes a row of the rejects table (`skip`).
    `gaps`: alignment gaps ('-', '.') make a record invalid (`reject`) or are removed (`remove`).
    `internal_stops`: a protein's '*' before its end makes it invalid (`reject`) or is read as X (`unknown`);
    one terminal '*' is always stripped (and counted). `interface` spells the settings in messages.
    """

    allowed_ambiguity: str = "N"
    on_invalid: OnInvalid = "error"
    gaps: GapPolicy = "reject"
    internal_stops: StopPolicy = "reject"
    interface: Interface = PYTHON

    def __post_init__(self) -> None:
        for key, choices in (("on_invalid", ("error", "skip")), ("gaps", ("reject", "remove")),
                             ("internal_stops", ("reject", "unknown"))):  # fmt: skip
            if getattr(self, key) not in choices:
                raise ValueError(
                    f"{key} must be one of {', '.join(choices)}, got {getattr(self, key)!r} "
                    f"(set {self.interface.setting(key, choices[0])})"
                )


DEFAULT_POLICY = InputPolicy()


def allowed_letters(molecule: str, allowed_ambiguity: str = "N") -> frozenset[str]:
    """The letters a record of `molecule` may contain, given the ambiguity codes the user accepts."""
    if molecule not in ALPHABETS:
        raise ValueError(f"unknown molecule {molecule!r}; expected one of {sorted(ALPHABETS)}")
    extra = frozenset(allowed_ambiguity.upper())
    if molecule != "protein":
        unknown = extra - NUCLEOTIDE_AMBIGUITY
        if unknown:
            raise ValueError(
                f"allowed_ambiguity {allowed_ambiguity!r} has letters that are not IUPAC nucleotide ambiguity "
                f"codes: {''.join(sorted(unknown))} (codes: {''.join(sorted(NUCLEOTIDE_AMBIGUITY))})"
            )
        return ALPHABETS[molecule] | extra
    return ALPHABETS[molecule]


def accepted_letters(molecule: str, allowed: frozenset[str]) -> str:
    """The letters `allowed` for `molecule`, written for messages: the alphabet, then the accepted extras."""
    extra = "".join(sorted(allowed - ALPHABETS[molecule]))
    return "".join(sorted(ALPHABETS[molecule])) + (f" + {extra}" if extra else "")


@lru_cache(maxsize=32)
def _outside(accepted: frozenset[str]) -> re.Pattern[str]:
    """A pattern matching any character that is not accepted, in either case."""
    characters = "".join(sorted(accepted | {c.lower() for c in accepted}))
    return re.compile(f"[^{re.escape(characters)}]")


@dataclass(frozen=True)
class SequenceFault:
    """Why a sequence is refused. `message` holds `{where}` where the fault is located (filled in by `describe`);
    `position` is the 0-based index of the faulty character in the checked text, None for an empty sequence."""

    message: str
    position: int | None = None

    def describe(self, where: str = "") -> str:
        return self.message.format(where=where)


@dataclass
class CheckedSequence:
    """A sequence as it will be scored, or the fault that refuses it, and what was changed on the way."""

    sequence: str = ""
    fault: SequenceFault | None = None
    terminal_stop: bool = False
    internal_stops: bool = False
    gapped: bool = False


class SequenceChecker:
    """Checks sequences of one molecule against its alphabet and the declared policy (one compiled pattern)."""

    def __init__(self, molecule: str, policy: InputPolicy = DEFAULT_POLICY) -> None:
        self.molecule = molecule
        self.policy = policy
        self.letters = allowed_letters(molecule, policy.allowed_ambiguity)
        accepted = set(self.letters)
        if policy.gaps == "remove":
            accepted |= set(GAP_CHARACTERS)
        if molecule == "protein":
            accepted.add(STOP)  # where a '*' may stand is checked separately
        self.outside = _outside(frozenset(accepted))
        self.remove_gaps = str.maketrans("", "", GAP_CHARACTERS) if policy.gaps == "remove" else None

    def check(self, text: str) -> CheckedSequence:
        """The sequence of `text` as it will be scored (upper-cased), or the fault that refuses it."""
        bad = self.outside.search(text)
        if bad is not None:
            return CheckedSequence(fault=SequenceFault(self._explain(bad.group(), text), bad.start()))
        result = CheckedSequence()
        sequence = text
        if self.remove_gaps is not None and (gapless := sequence.translate(self.remove_gaps)) != sequence:
            sequence, result.gapped = gapless, True
        if self.molecule == "protein" and STOP in sequence:
            if sequence.endswith(STOP):
                sequence, result.terminal_stop = sequence[:-1], True
            if STOP in sequence:
                if self.policy.internal_stops == "reject":
                    setting = self.policy.interface.setting("internal_stops", "unknown")
                    message = (
                        "internal stop '*' {where} (only one terminal '*' is stripped); set "
                        f"{_braces(setting)} to read internal stops as X"
                    )
                    return CheckedSequence(fault=SequenceFault(message, text.index(STOP)))
                sequence, result.internal_stops = sequence.replace(STOP, "X"), True
        if not sequence:
            reason = "empty sequence" + (" once gaps and stops are removed" if text else "")
            return CheckedSequence(fault=SequenceFault(reason))
        result.sequence = sequence.upper()
        return result

    def _explain(self, char: str, sequence: str) -> str:
        """Why `char` is refused, with a hint at the likely cause and the setting that accepts it, if any."""
        setting = self.policy.interface.setting
        upper = char.upper()
        nucleotide = self.molecule in ("dna", "rna")
        if char in WHITESPACE:
            reason = "whitespace inside the sequence {where}"
        else:
            reason = (
                f"character {_braces(repr(char))} {{where}} is not in the {self.molecule} alphabet "
                f"(accepted: {accepted_letters(self.molecule, self.letters)}, case-insensitive)"
            )
        if char == COMMENT:
            hint = (
                "';' starts a comment line in the old FASTA format, which is not read here: remove the comment "
                "lines (grep -v '^;' in.fa > out.fa)"
            )
        elif any(c.isdigit() for c in sequence):
            hint = "digits in a sequence line: a GenBank or EMBL sequence block? Convert it to FASTA"
        elif char in WHITESPACE:
            return reason
        elif char in GAP_CHARACTERS:
            hint = f"an alignment gap: set {setting('gaps', 'remove')} to read the ungapped sequence"
        elif nucleotide and upper == "U" and self.molecule == "dna":
            hint = f"looks like RNA: set {setting('molecule', 'rna')}"
        elif nucleotide and upper == "T":
            hint = f"looks like DNA: set {setting('molecule', 'dna')}"
        elif nucleotide and not PROTEIN_ONLY.isdisjoint(sequence.upper()):
            hint = f"if the sample holds proteins, set {setting('molecule', 'protein')}"
        elif nucleotide and upper in NUCLEOTIDE_AMBIGUITY:
            codes = "".join(sorted(self.letters - ALPHABETS[self.molecule] | {upper}))
            hint = f"an IUPAC ambiguity code: set {setting('allowed_ambiguity', codes)} to accept it"
        elif nucleotide and upper == "X":
            hint = "X marks masked bases in some tools (RepeatMasker -x); mask with N instead"
        elif nucleotide and char == STOP:
            hint = f"'*' is a stop in translated sequences: for proteins set {setting('molecule', 'protein')}"
        else:
            return reason
        return f"{reason}; {_braces(hint)}"


def _braces(text: str) -> str:
    """`text` made safe for str.format (a sequence's own '{' or '}' must not be read as a placeholder)."""
    return text.replace("{", "{{").replace("}", "}}")


@lru_cache(maxsize=64)
def sequence_checker(molecule: str, policy: InputPolicy = DEFAULT_POLICY) -> SequenceChecker:
    """A checker for `molecule` and `policy`, built once per process and reused."""
    return SequenceChecker(molecule, policy)
