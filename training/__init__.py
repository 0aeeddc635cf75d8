"""Model definitions and the training pipeline of ssmpose."""
