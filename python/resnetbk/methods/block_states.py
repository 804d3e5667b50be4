"""Each block's input and output in the last training forward, for the methods that fit or
constrain the blocks' dynamics (Koopman, physics-informed).

``track_block_states(model)`` registers the hooks once; afterwards ``model.block_states`` holds
``(input, output)`` per block call of the last forward in training mode (empty in evaluation).
With the multi-scale option the middle blocks' pairs are at the shortened length.
"""

from __future__ import annotations


def track_block_states(model) -> None:
    if getattr(model, "block_states", None) is not None:
        return
    model.block_states = []

    def reset(module, args):
        model.block_states = []

    def record(module, args, output):
        if module.training:
            model.block_states.append((args[0], output))

    model.register_forward_pre_hook(reset)
    for block in model.blocks:
        block.register_forward_hook(record)
