"""What seqshard reads and writes: text files of any compression (`textfiles`), what a valid sequence is
(`sequences`, the one check every entry point runs), FASTA (`fasta`), the sample sheet (`samples`), the Parquet
outputs (`parquet`), and how each interface spells a setting in messages (`interface`)."""
