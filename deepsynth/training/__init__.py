"""Fine-tuning parts: config, training modes, the input pipeline, checkpoints and the Ray Train loop."""
