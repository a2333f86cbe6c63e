"""Base models: what a checkpoint is, how it loads offline, what it predicts."""
