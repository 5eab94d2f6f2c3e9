"""Data stage: read a source, type and clean its columns, split it, and fit the preprocessing."""
