"""`seqshard.client`: the Python client of `seqshard serve`, under the name the API documents.

The code lives with the server in `seqshard.serve.client`; this module only gives it its public name.
"""

from seqshard.serve.client import SeqshardClient, ServerError, predict_fasta

__all__ = ["SeqshardClient", "ServerError", "predict_fasta"]
