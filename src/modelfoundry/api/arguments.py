"""What the verbs accept, turned into objects: a config, a model's local directory, a fresh output directory."""

from __future__ import annotations

import time
from pathlib import Path

from modelfoundry.config import Config, load_config
from modelfoundry.errors import RunDirError


def model_dir(ref: str | Path) -> Path:
    """A run directory as given, or the local copy of a registered model (NAME, NAME/VERSION, NAME@ALIAS)."""
    path = Path(ref)
    if path.exists():
        return path
    from modelfoundry.registry import REF, download

    if REF.match(str(ref)):
        return download(str(ref))
    raise RunDirError(f"'{ref}' is neither a run directory nor a registered model reference.",
                      "Pass a directory under runs/, or NAME, NAME/VERSION or NAME@ALIAS "
                      "(see `foundry registry list`).")



def as_config(config: Config | str | Path | dict | None) -> Config:
    if isinstance(config, Config):
        return config
    if config is None:
        from modelfoundry.errors import ConfigError

        raise ConfigError("No config given.", "Pass a YAML path, e.g. `foundry run examples/digits.yaml`.")
    return load_config(config)


def fresh_dir(root: Path, prefix: str) -> Path:
    """A new `<root>/<prefix>-<UTC timestamp>[-N]/`."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path, suffix = root / f"{prefix}-{stamp}", 1
    while path.exists():
        suffix += 1
        path = root / f"{prefix}-{stamp}-{suffix}"
    return path
