"""Data quality: findings about a table before any training (`foundry data check`, and `foundry run`'s warnings)."""
