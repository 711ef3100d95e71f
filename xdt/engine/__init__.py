"""DeepSpeed set-up, ranks, checkpoints and signals."""
