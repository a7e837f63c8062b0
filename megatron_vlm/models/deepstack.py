"""DeepStack (Qwen3-VL): visual features of intermediate vision layers added to the first language layers.

Language layer ``l < n`` adds feature ``l`` to its output at the image tokens (0 elsewhere). The
features ride with the hidden states as extra columns of one *stream* ``[s, b, h * (1 + slots)]``:
the embedding builds it (one scatter for the embeddings and the features, cut by CP and SP like
the tokens), each stage's decoder gets the ``slots`` columns as megatron-core's per-layer
``context`` (which activation recomputation passes through ``tensor_parallel.checkpoint`` like the
hidden states), and a stage sends the next one the slots of the layers it does not hold, so the
pipeline carries each feature up to its layer (and its gradient back).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_layer import TransformerLayer


def stage_slots(deepstack_layers: int, first_layer: int, num_layers: int) -> tuple[int, int]:
    """Slots a stage whose layers are ``first_layer .. first_layer + num_layers - 1`` receives and sends on."""
    return max(0, deepstack_layers - first_layer), max(0, deepstack_layers - first_layer - num_layers)


def split_stream(stream: torch.Tensor, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[s, b, h * (1 + slots)]`` -> hidden states ``[s, b, h]`` and the features ``[s, b, h * slots]``."""
    hidden = stream.shape[-1] // (1 + slots)
    return stream[..., :hidden], stream[..., hidden:]


def stream_out(hidden: torch.Tensor, features: torch.Tensor | None, slots_in: int, slots_out: int) -> torch.Tensor:
    """A stage's output: its hidden states and the last ``slots_out`` of its ``slots_in`` feature slots."""
    if not slots_out:
        return hidden
    width = hidden.shape[-1]
    return torch.cat([hidden, features[..., (slots_in - slots_out) * width:]], dim=-1)


class DeepStackTransformerLayer(TransformerLayer):
    """A language layer that adds its DeepStack feature (carried in ``context``) to its output.

    ``deepstack_layers``: how many layers (from the first) have a feature; ``context`` holds the last
    ``slots`` of them, so this layer's is slot ``l - (deepstack_layers - slots)`` for 0-based layer ``l``.
    """

    def __init__(self, *args, deepstack_layers: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.deepstack_layers = deepstack_layers

    def forward(self, *args, **kwargs):
        output, context = super().forward(*args, **kwargs)
        if context is not None:
            width = output.shape[-1]
            slot = self.layer_number - 1 - (self.deepstack_layers - context.shape[-1] // width)
            if 0 <= slot < context.shape[-1] // width:
                output = output + context[..., slot * width:(slot + 1) * width]
        return output, context
