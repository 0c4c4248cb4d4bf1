"""Training: configs and presets (configs/*.yaml), data streaming, densification strategy, trainer, checkpoints."""
