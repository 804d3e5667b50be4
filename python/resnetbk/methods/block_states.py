"""Each block's input and output in the last training forward, for the methods that fit or
constrain the blocks' dynamics (physics-informed).

``track_block_states(model)`` registers the hooks once; afterwards ``model.block_states`` holds
``(input, output)`` per block call of the last forward in training mode (empty in evaluation).
With the multi-scale option the middle blocks' pairs are at the shortened length.
"""

from __future__ import annotations


def track_block_states(model) -> None:
    if getattr(model, "block_states", None) is not None:
        return
    _reset(model, ())  # (a block called on its own, outside the model's forward, records here too)
    # The hooks reach the model through their module argument (never a captured reference), so a
    # copy of the model (quantization's float copy) records into its own list.
    model.register_forward_pre_hook(_reset)
    for block in model.blocks:
        block.register_forward_hook(_record)


def _reset(model, args) -> None:
    model.block_states = []
    for block in model.blocks:
        block.block_states_sink = model.block_states


def _record(block, args, output) -> None:
    if block.training:
        block.block_states_sink.append((args[0], output))
