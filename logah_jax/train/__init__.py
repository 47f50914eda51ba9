"""Training: one loop (GHN training and fine-tuning), evaluation, comparison."""
