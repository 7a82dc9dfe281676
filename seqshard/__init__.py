"""seqshard: batch scoring of biological sequences with native DNABERT-2, LucaOne, ESM-2 and Nucleotide Transformer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("seqshard")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
