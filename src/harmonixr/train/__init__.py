"""Training: the thin LightningModule and train(config) -> run directory."""
