"""Training: the GHN training step and loop, objectives, optimizers."""
