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


def split_inputs(inputs: InputSpec, encoded: list[str], model: str, needs: str) -> tuple[list[str], list[str], int]:
    """(the encoder's inputs present, the side inputs, the side inputs' flattened width) for model `model`.

    `encoded` lists the input names the encoder can read (e.g. ["tokens", "attention_mask"]); the first is
    required (`needs` says what it is, for the error). Other inputs must be float32 (flattened beside the
    encoder's output); anything else is a ConfigError saying what to change.
    """
    import math

    names = inputs.names
    if encoded[0] not in names:
        raise ConfigError(f"model {model} needs {needs} (input '{encoded[0]}'), but the data gives {inputs!r}.",
                          "Declare the column with data.features.<column>: {type: text} (or pick a model for "
                          "these inputs, e.g. mlp).")
    mine = [n for n in encoded if n in names]
    side = [f for f in inputs if f.name not in mine]
    refused = [f.name for f in side if f.dtype != "float32" or f.name == "image"]
    if refused:
        raise ConfigError(f"model {model} cannot combine its {needs} with the input(s) {refused}.",
                          "Use one text column (several are joined into one), numeric and categorical columns "
                          "beside it; drop image columns with type: ignore.")
    return mine, [f.name for f in side], sum(math.prod(f.shape) for f in side)


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


def combined(names: list[str], encoder: nn.Module, encoder_inputs: list[str], side_inputs: list[str],
             width: int, head: nn.Module) -> nn.Module:
    """A module whose forward takes the inputs `names` in order: `encoder(*encoder_inputs)` gives (B, D),
    the side inputs are flattened beside it, and `head` maps the (B, width) concatenation to the outputs."""
    import torch
    from torch import nn

    class Combined(nn.Module):
        padding_invariant = getattr(encoder, "padding_invariant", False)  # the loop may trim padding then

        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.head = encoder, head
            self.positions = [names.index(n) for n in encoder_inputs]
            self.side = [names.index(n) for n in side_inputs]
            self.width = width

        def forward(self, *inputs: Any) -> Any:  # the named inputs in the spec's order -> (B, n_outputs)
            parts = [self.encoder(*(inputs[i] for i in self.positions))]  # (B, D)
            parts += [inputs[i].flatten(1) for i in self.side]  # (B, F) each
            return self.head(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])

    return Combined()
