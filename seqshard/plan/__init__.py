"""Planning a model entry's work: its samples packed into token-balanced shards of distinct sequences (`packing`,
`sharding`) and the scored shards gathered back into one file per sample (`merge`)."""
