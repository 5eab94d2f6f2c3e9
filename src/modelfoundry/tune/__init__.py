"""Hyperparameter search on Optuna from a config's `tune:` section (space, sampler, pruner, budget)."""
