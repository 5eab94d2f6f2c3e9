"""Evaluation stage: metrics, baselines, error analysis, plots and the markdown report."""
