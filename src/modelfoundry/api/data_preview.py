"""`foundry data preview`: what `data.augment` does to a few training rows, before training on it.

Prepares the config's data as a run would (training split), picks `rows` training rows at random (seeded),
and applies the configured augmentation to them several times, as successive epochs would: images become a PNG
grid (each row: the original, then its augmented versions, un-scaled for display); texts and numeric rows
become a markdown or plain-text table (tokens decoded back to words; numbers in their original units).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.config import Config
from modelfoundry.errors import ConfigError
from modelfoundry.storage import write_bytes_atomic, write_text

if TYPE_CHECKING:
    import numpy as np

    from modelfoundry.data.prepare import PreparedData

TABLE_SUFFIXES = (".md", ".txt")
IMAGE_SUFFIXES = (".png",)
MAX_COLUMNS = 6  # numeric columns shown per table


@dataclass
class PreviewResult:
    path: Path
    kind: str  # "image", "text" or "tabular"
    rows: int
    versions: int
    transforms: list[str]
    mixed: list[str] = field(default_factory=list)  # per version, how it was mixed ("" when it was not)
    table: str | None = None  # the text / tabular preview (also written to `path`)


def preview_augmentation(config: Config | str | Path | dict, output: str | Path, rows: int = 16, seed: int = 0,
                         versions: int = 6) -> PreviewResult:
    """Apply `config`'s `data.augment` to `rows` training rows `versions` times and save the result at `output`.

    Args:
        output: a .png for image data; a .md or .txt for text or numeric rows.
        seed: picks the rows and seeds the augmentation (version k is what epoch k of a run with this seed draws
            for a batch made of these rows).

    Raises:
        ConfigError: no augmentation configured, an output suffix that does not suit the data, or transforms that
            do not fit the data (as `foundry run` would say).
    """
    from modelfoundry.api.arguments import as_config

    config, output = as_config(config), Path(output)
    if not config.data.augment.active:
        raise ConfigError(f"data.augment: the config {config.name} sets no augmentation, so there is nothing to "
                          "preview.", "Add a data.augment section, e.g. data: {augment: {image: {affine: {p: 0.8}}}} "
                          "(docs/config.md#dataaugment lists the transforms).")
    if output.suffix.lower() not in (*IMAGE_SUFFIXES, *TABLE_SUFFIXES):
        raise ConfigError(f"The preview is saved as PNG (images) or markdown / text (texts, numeric rows); "
                          f"'{output}' has neither suffix.", "Use -o grid.png for images, -o preview.md otherwise.")
    from modelfoundry.data.augment import build_augmenter
    from modelfoundry.experiment import prepare

    data = prepare(config)
    augmenter = build_augmenter(config.data.augment, data.task, data.input_spec, data.preprocessor.desc,
                                data.X["train"], seed)
    originals, batches, mixed = _augmented(augmenter, data, rows, seed, versions)
    names = data.input_spec.names
    kind = "image" if "image" in names else "text" if "tokens" in names else "tabular"
    _check_suffix(output, kind)
    result = PreviewResult(output, kind, len(next(iter(originals.values()))), versions, augmenter.transforms, mixed)
    if kind == "image":
        write_bytes_atomic(output, image_grid(originals["image"], [b["image"] for b in batches],
                                              data.preprocessor.desc["image"], mixed))
        return result
    if kind == "text":
        shown = augmenter.text.special.tolist() if augmenter.text is not None else []
        hidden = {i for i in shown if augmenter.text is None or i != augmenter.text.unknown_id}
        result.table = text_table(originals, batches, data.preprocessor.desc["text"], output.suffix.lower(), hidden)
    else:
        result.table = numeric_table(originals["numeric"], [b["numeric"] for b in batches], data.preprocessor.desc,
                                     output.suffix.lower(), mixed)
    write_text(output, result.table)
    return result


def _augmented(augmenter: Any, data: PreparedData, rows: int, seed: int, versions: int
               ) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]], list[str]]:
    """The chosen training rows' inputs, and each version's augmented inputs (and how it was mixed)."""
    import numpy as np
    import torch

    train = data.X["train"]
    total = len(data.y["train"])
    picked = np.sort(np.random.default_rng(seed).choice(total, size=min(rows, total), replace=False))
    originals = {name: np.asarray(array[picked]) for name, array in train.items()}
    inputs = tuple(torch.from_numpy(np.ascontiguousarray(originals[name])) for name in augmenter.names)
    batches, mixed = [], []
    for version in range(1, versions + 1):
        changed, mix = augmenter(inputs, version, 0)
        batches.append({name: t.numpy() for name, t in zip(augmenter.names, changed)})
        mixed.append(f"{mix.kind} {mix.lam:.2f}" if mix is not None else "")
    return originals, batches, mixed


def _check_suffix(output: Path, kind: str) -> None:
    suffix = output.suffix.lower()
    if kind == "image" and suffix not in IMAGE_SUFFIXES:
        raise ConfigError(f"The data's inputs are images, so the preview is a PNG grid; '{output}' is not a .png.",
                          f"Use -o {output.with_suffix('.png')}.")
    if kind != "image" and suffix not in TABLE_SUFFIXES:
        raise ConfigError(f"The data's inputs are {'texts' if kind == 'text' else 'numeric rows'}, so the preview "
                          f"is a table; '{output}' is not a .md or .txt file.", f"Use -o {output.with_suffix('.md')}.")


def image_grid(originals: np.ndarray, versions: list[np.ndarray], image: dict[str, Any], mixed: list[str]) -> bytes:
    """PNG bytes: one row per image, the original then each augmented version, in raw pixel units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    offset, divisor = float(image["offset"]), float(image["divisor"])
    columns = [originals, *versions]
    raw = [c * divisor + offset for c in columns]  # (N, C, H, W) each, as the pixels were before scaling
    low, high = float(raw[0].min()), float(raw[0].max())
    n, channels = originals.shape[0], originals.shape[1]
    fig, axes = plt.subplots(n, len(columns), figsize=(1.2 * len(columns), 1.2 * n), squeeze=False)
    titles = ["original", *[f"aug {k}" + (f"\n{m}" if m else "") for k, m in enumerate(mixed, 1)]]
    for col, pixels in enumerate(raw):
        for row in range(n):
            ax = axes[row][col]
            picture = np.clip((pixels[row] - low) / ((high - low) or 1.0), 0, 1)
            if channels == 3:
                ax.imshow(picture.transpose(1, 2, 0))
            else:
                ax.imshow(picture[0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def text_table(originals: dict[str, np.ndarray], versions: list[dict[str, np.ndarray]], text: dict[str, Any],
               suffix: str, hidden: set[int]) -> str:
    """Each row's text, then each augmented version, decoded back to words (windows joined); the special tokens
    in `hidden` ([CLS], [SEP], padding) are left out, a masked token shows as the mask or unknown token."""
    from modelfoundry.data.text import TextEncoder

    tokenizer = TextEncoder.from_description(dict(text)).tokenizer_

    def decode(tokens: np.ndarray, mask: np.ndarray) -> str:
        ids = [i for i in tokens[mask == 1].tolist() if i not in hidden]  # the row's tokens, window after window
        return tokenizer.decode(ids, skip_special_tokens=False).replace("|", "\\|").replace("\n", " ")

    lines = []
    for row in range(len(originals["tokens"])):
        texts = [decode(originals["tokens"][row], originals["attention_mask"][row])]
        texts += [decode(v["tokens"][row], v["attention_mask"][row]) for v in versions]
        lines.append(_block(f"row {row + 1}", ["original", *[f"aug {k}" for k in range(1, len(versions) + 1)]],
                            [[t] for t in texts], ["text"], suffix))
    return "\n".join(lines)


def numeric_table(originals: np.ndarray, versions: list[np.ndarray], desc: dict[str, Any], suffix: str,
                  mixed: list[str]) -> str:
    """Each row's first numeric columns, then each augmented version, in the columns' original units (a version
    mixed with another row says so: "aug 2 (mixup 0.83)" kept 83% of this row)."""
    columns = _unscaled_columns(desc, originals.shape[1])[:MAX_COLUMNS]
    labels = ["original", *[f"aug {k}" + (f" ({m})" if m else "") for k, m in enumerate(mixed, 1)]]
    lines = []
    for row in range(len(originals)):
        values = [[_show(x[row, i], scale) for _, i, scale in columns] for x in [originals, *versions]]
        lines.append(_block(f"row {row + 1}", labels, values, [name for name, _, _ in columns], suffix))
    return "\n".join(lines)


def _unscaled_columns(desc: dict[str, Any], width: int) -> list[tuple[str, int, dict[str, Any]]]:
    """(name, position in the numeric input, scaling) of the numeric features first, then the other columns."""
    numeric, other, position = [], [], 0
    for feature in desc.get("features", []):
        for k in range(int(feature["width"])):
            entry = (desc["feature_names"][position], position, feature.get("scale") or {"method": "none"})
            (numeric if feature["kind"] == "numeric" else other).append(entry)
            position += 1
    return (numeric + other)[:width]


def _show(value: float, scale: dict[str, Any]) -> str:
    if scale.get("method") == "standard":
        value = value * scale["scale"] + scale["mean"]
    elif scale.get("method") == "minmax":
        value = (value - scale["min"]) / scale["scale"]
    return f"{value:.4g}"


def _block(title: str, labels: list[str], values: list[list[str]], headers: list[str], suffix: str) -> str:
    """One row's table: markdown (.md) or aligned plain text (.txt)."""
    if suffix == ".md":
        out = [f"### {title}", "", "| version | " + " | ".join(headers) + " |",
               "|---|" + "---|" * len(headers)]
        out += ["| " + " | ".join([label, *row]) + " |" for label, row in zip(labels, values)]
        return "\n".join(out) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in values)) for i, h in enumerate(headers)]
    first = max(len(label) for label in ["version", *labels])
    out = [title, "  ".join(["version".ljust(first), *(h.ljust(w) for h, w in zip(headers, widths))]).rstrip()]
    out += ["  ".join([label.ljust(first), *(v.ljust(w) for v, w in zip(row, widths))]).rstrip()
            for label, row in zip(labels, values)]
    return "\n".join(out) + "\n"
