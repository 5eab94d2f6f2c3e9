"""Mixed inputs: one encoder for the inputs a model is about (text, a series, ...), the other float inputs
(tabular `numeric` features) beside its output, and a head on the concatenation.

A sequence or pretrained model's builder uses `split_inputs` to take the inputs its encoder reads and
`Combined` to put encoder, side inputs and head together, so every such model handles a config that mixes
text with numeric and categorical columns the same way. Torch is imported inside, so reading the model
table stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelfoundry.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from modelfoundry.artifacts.inputs import InputSpec


IMAGE_FEATURES = 32  # what the small image encoder of an image side input gives per row


def split_inputs(inputs: InputSpec, encoded: list[str], model: str, needs: str,
                 images: bool = True) -> tuple[list[str], list[str], int]:
    """(the encoder's inputs present, the side inputs, the side inputs' width beside the encoder) for `model`.

    `encoded` lists the input names the encoder can read (e.g. ["tokens", "attention_mask"]); the first is
    required (`needs` says what it is, for the error). Other inputs must be float32: numeric ones are flattened
    beside the encoder's output, an image (when `images`) goes through a small CNN of its own
    (`side_encoder`); anything else is a ConfigError saying what to change.
    """
    import math

    names = inputs.names
    if encoded[0] not in names:
        raise ConfigError(f"model {model} needs {needs} (input '{encoded[0]}'), but the data gives {inputs!r}.",
                          "Declare the column with data.features.<column>: {type: text} (or pick a model for "
                          "these inputs, e.g. mlp).")
    mine = [n for n in encoded if n in names]
    side = [f for f in inputs if f.name not in mine]
    refused = [f.name for f in side if f.dtype != "float32" or f.name == "image" and not images]
    if refused:
        raise ConfigError(f"model {model} cannot combine its {needs} with the input(s) {refused}.",
                          "Beside it use numeric and categorical columns" + (" and one image" if images else
                          "; for text with an image use model lstm, gru or transformer") +
                          " (several text columns are joined into one), or drop columns with type: ignore.")
    width = sum(IMAGE_FEATURES if f.name == "image" else math.prod(f.shape) for f in side)
    return mine, [f.name for f in side], width


def side_encoder(field: Any) -> nn.Module:
    """How a side input reaches the head: numeric features flattened; an image (C, H, W) through two conv
    layers and global average pooling to IMAGE_FEATURES values."""
    from torch import nn

    if field.name != "image":
        return nn.Flatten()
    return nn.Sequential(nn.Conv2d(field.shape[0], 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                         nn.Conv2d(16, IMAGE_FEATURES, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


def build_head(width: int, hidden: list[int], n_outputs: int, dropout: float = 0.0) -> nn.Module:
    """Dense layers (ReLU, dropout) from `width` features to `n_outputs`."""
    from torch import nn

    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def combined(inputs: InputSpec, encoder: nn.Module, encoder_inputs: list[str], side_inputs: list[str],
             width: int, head: nn.Module) -> nn.Module:
    """A module whose forward takes the inputs of `inputs` in order: `encoder(*encoder_inputs)` gives (B, D),
    each side input's `side_encoder` output goes beside it, and `head` maps the (B, width) concatenation to
    the outputs."""
    import torch
    from torch import nn

    names = inputs.names

    class Combined(nn.Module):
        padding_invariant = getattr(encoder, "padding_invariant", False)  # the loop may trim padding then

        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.head = encoder, head
            self.positions = [names.index(n) for n in encoder_inputs]
            self.side = [names.index(n) for n in side_inputs]
            self.width = width
            if "image" in side_inputs:  # (numeric ones are flattened: no parameters, as before images)
                self.side_encoders = nn.ModuleList(side_encoder(inputs[n]) for n in side_inputs)

        def forward(self, *inputs: Any) -> Any:  # the named inputs in the spec's order -> (B, n_outputs)
            parts = [self.encoder(*(inputs[i] for i in self.positions))]  # (B, D)
            if hasattr(self, "side_encoders"):
                parts += [enc(inputs[i]) for enc, i in zip(self.side_encoders, self.side)]
            else:
                parts += [inputs[i].flatten(1) for i in self.side]  # (B, F) each
            return self.head(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])

    return Combined()
