"""Training: configs and presets, data streaming, losses, densification strategy, trainer, checkpoints."""
