"""Where and on what seqshard runs: devices and precision (`devices`), GPUs shared out to jobs (`gpus`),
checkpoints (`checkpoints`), object storage and JuiceFS (`storage`), the result cache (`cache`), telemetry
(`monitoring`), job records for the report (`jobs`) and logging (`logs`)."""
