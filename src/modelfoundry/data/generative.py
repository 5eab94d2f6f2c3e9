"""The generative task's data (`data.task: generative`, a `model: {name: gan}`): which columns a GAN learns,
their scaling, and the way back from the model's scale to the data's units.

A GAN generates one float input: an image feature (its pixels scaled to [0, 1] with `scale: minmax`, which the
generator's sigmoid produces) or numeric columns (standardised; generated values are mapped back and kept in
the range seen in training). Categorical and text columns are refused (leave them out with `type: ignore`): a
one-hot block generated as free numbers would not decode to categories. `data.target`, when the data has it, is
the class column of a class-conditional generator; without it (`data.target: null`, or the default `target`
absent) a constant label stands in and the generator is unconditional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

    from modelfoundry.config import DataConfig
    from modelfoundry.data.prepare import PreparedData

NO_LABEL = "__no_label__"  # the label column of unlabelled data: one class, an unconditional generator
DEFAULT_TARGET = "target"
MAX_CLASSES = 100  # a conditional generator's label column: classes, not a measurement


def prepare_generative(cfg: DataConfig, seed: int) -> PreparedData:
    """The data stage of `data.task: generative`; `seed` is the split seed. y holds each row's class index (0 for
    every row of unlabelled data); info['generative'] records whether the rows were labelled and the classes."""
    from modelfoundry.data.prepare import load_clean, prepare_parts
    from modelfoundry.data.sources import load_source
    from modelfoundry.data.split import split_indices, train_share
    from modelfoundry.data.transform import TargetEncoder

    raw = load_source(cfg.source)
    labelled = cfg.target is not None and (cfg.target in raw.columns or cfg.target != DEFAULT_TARGET)
    read = cfg if labelled else cfg.model_copy(update={"target": NO_LABEL})
    clean = load_clean(read, seed, raw=raw if labelled else raw.assign(**{NO_LABEL: "all"}))
    _check_features(clean.specs, cfg.source)
    labels = clean.frame[read.target]
    if labelled:
        _check_labels(labels, read.target, cfg.source)
    codes = labels.astype(str).to_numpy()
    stratify = labelled and cfg.split.stratify
    positions = split_indices(codes, cfg.split.val, cfg.split.test, stratify, seed)
    if cfg.split.train_fraction < 1:
        positions["train"] = train_share(positions["train"], codes if stratify else None, cfg.split.train_fraction,
                                         seed)
    parts = {name: clean.frame.iloc[positions[name]] for name in ("train", "val", "test")}
    if len(parts["train"]) < 2:
        raise DataError(f"The training split of {cfg.source} has {len(parts['train'])} row(s); a GAN needs more.",
                        "Use more data, or lower data.split.val and data.split.test.")
    target = TargetEncoder("classification").fit(parts["train"][read.target])
    data = prepare_parts(clean, parts, read, seed, stratify, target=target)
    data.info["generative"] = {"labelled": labelled, "column": read.target if labelled else None,
                               "classes": [str(c) for c in target.classes_] if labelled else []}
    return data


def _check_features(specs: list[Any], source: str) -> None:
    """One image (scaled minmax) or numeric columns only: what a generator can produce and map back."""
    kinds = {s.kind for s in specs}
    other = [s.name for s in specs if s.kind not in ("numeric", "image")]
    if other or kinds == {"numeric", "image"}:
        named = other or [s.name for s in specs if s.kind == "numeric"]
        raise ConfigError(f"A GAN (data.task: generative) generates one image or numeric columns, but {source} also "
                          f"has {'categorical or text' if other else 'numeric'} column(s) {named[:8]}.",
                          "Leave them out with data.features: {COLUMN: {type: ignore}} (categorical columns are "
                          "not generated: a one-hot block of free numbers would not decode to a category).")
    image = next((s for s in specs if s.kind == "image"), None)
    if image is not None and image.scale != "minmax":
        raise ConfigError(f"A GAN generates pixels in [0, 1], but image feature '{image.name}' is scaled "
                          f"'{image.scale}'.", f"Set data.features: {{'{image.name}': {{type: image, scale: minmax, "
                          "...}}.")


def _check_labels(labels: pd.Series, column: str, source: str) -> None:
    count = labels.nunique()
    if count > MAX_CLASSES:
        raise ConfigError(f"data.target '{column}' of {source} has {count} distinct values; for a GAN it is the class "
                          f"column of a conditional generator (at most {MAX_CLASSES} classes).",
                          "Set data.target: null to train an unconditional generator, or name a class column.")


def unscale(desc: dict[str, Any], rows: np.ndarray) -> pd.DataFrame:
    """Generated rows in the model's scale (N, *input_shape) -> a table in the data's units, with the columns of
    the preprocessing description `desc` (an image: one column per pixel; tables: each numeric column, within the
    range seen in training)."""
    import pandas as pd

    flat = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    if desc["kind"] == "image":
        image = desc["image"]
        columns = image["columns"] if image["array_column"] is None else \
            [f"{image['array_column']}_{i}" for i in range(flat.shape[1])]
        return pd.DataFrame(flat * image["divisor"] + image["offset"], columns=columns)
    out = {}
    features = [f for f in desc["features"] if f["width"]]
    if len(features) != flat.shape[1] or any(f["kind"] != "numeric" for f in features):
        raise DataError("These rows do not match the model's numeric columns.", "Sample from a GAN run.")
    for j, feature in enumerate(features):
        x, scale = flat[:, j], feature["scale"]
        if scale["method"] == "standard":
            x = x * scale["scale"] + scale["mean"]
        elif scale["method"] == "minmax":
            x = (x - scale["min"]) / scale["scale"]
        if feature.get("range"):
            x = np.clip(x, *feature["range"])
        out[feature["column"]] = x
    return pd.DataFrame(out)
