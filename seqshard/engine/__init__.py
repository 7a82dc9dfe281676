"""The inference engine, in the order the data goes through it: `types` (shared types, torch-free), `windows`
(fitting sequences to a model), `batching` (token-budget batches), `runner` (batches through the model), `pooling`
and `heads`, `tasks` (what each task computes per batch), `chunks` (records scored chunk by chunk, duplicates and
cached rows filled in) and `driver` (one FASTA file in, one Parquet per task out)."""
