"""Fine-tuning: the job store, training-file validation, the job runner, the LoRA trainer and adapter writers."""
