"""Cut a smaller student from a larger base by keeping a subset of its decoder layers
(DistilBERT/Minitron-style initialization); the train stage records the cut in the model's meta."""

from __future__ import annotations


def keep_layers(model, layers: list[int]):
    """Cut a student from a larger base: keep these decoder layers (in order), drop the rest."""
    import torch

    blocks = model.model.layers
    n = len(blocks)
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ValueError(f"student.keep_layers: {bad} out of range for a {n}-layer base")
    kept = [blocks[i % n] for i in layers]
    model.model.layers = torch.nn.ModuleList(kept)
    for new_index, block in enumerate(kept):
        # Attention modules carry their layer index for the KV cache; renumber them.
        if hasattr(block, "self_attn") and hasattr(block.self_attn, "layer_idx"):
            block.self_attn.layer_idx = new_index
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i % n] for i in layers]
    return model
