"""The exported model of a run whose methods change its size (quantization, pruning): one file,
its size on disk measured, and a loader that gives back the float weights.

Format (``torch.save`` of a dict ``name -> entry``), per tensor of the model's effective state
(parametrizations resolved: masks applied, fake-quant rounding applied):

* ``{"dense": t}``: as is (float32 weights, norms, biases, buffers);
* ``{"int8": q, "scale": s}``: a weight quantized per output channel (rows), symmetric:
  ``t = q * s[:, None]`` (the quantization method's per-channel scales);
* ``{"int4": packed, "scale": s, "shape": shape, "group": g}``: a matrix quantized to symmetric
  INT4 over groups of ``g`` columns, two values a byte (``pack_int4``);
* ``{"sparse": values, "mask": packed, "shape": shape}``: a matrix with at least half its entries
  zero: a bitmask of the non-zeros (8 per byte) and their values in row-major order (float32,
  or int8 with ``scale`` when quantized too).

Parameters of experts removed by pruning are left out (``"removed"`` lists them; the loader
restores them as zeros). Pruning's own bookkeeping (``expert_routing``: routed tokens, which
experts are alive) is not part of the export: a model loaded from it routes as a plain model
does, unless pruning's ``ExpertRouting`` is attached again with the experts ``removed`` lists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.nn.utils import parametrize

from ..train.events import Listener

#: A matrix is stored sparse from this share of zeros on (a bitmask costs 1/32 of float32).
SPARSE_FROM = 0.5


def effective_state_dict(model) -> dict:
    """The state the model computes with: parametrized weights as the forward sees them (masked,
    fake-quantized), everything else as stored; the methods' own bookkeeping left out. Read in
    evaluation mode: in training, reading a fake-quantized weight updates its observer."""
    was_training = model.training
    model.eval()
    try:
        return _effective_state_dict(model)
    finally:
        model.train(was_training)


def _effective_state_dict(model) -> dict:
    state = {}
    for key, value in model.state_dict().items():
        if (".parametrizations." in key or key.startswith("parametrizations.") or "fake_quant" in key
                or ".expert_routing." in key):
            continue
        state[key] = value.detach()
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            state[f"{name}.weight" if name else "weight"] = module.weight.detach()
    return state


def pack_int4(tensor: torch.Tensor, group: int) -> dict:
    """A ``(rows, cols)`` matrix as symmetric INT4 over groups of ``group`` columns: values
    ``round(w / scale)`` in [-8, 7] stored two to a byte (offset by 8), one float32 scale per
    (row, group), the group's largest magnitude over 7 (the quantization method's GroupInt4 grid,
    which its weights already sit on)."""
    rows, cols = tensor.shape
    padded = torch.nn.functional.pad(tensor.float(), (0, (-cols) % group)).view(rows, -1, group)
    scale = (padded.abs().amax(-1) / 7).clamp_min(1e-12)
    q = torch.clamp(torch.round(padded / scale[..., None]), -8, 7).to(torch.int16).view(rows, -1)[:, :cols] + 8
    flat = q.flatten()
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    packed = (flat[0::2] | (flat[1::2] << 4)).to(torch.uint8)
    return {"int4": packed, "scale": scale, "shape": [rows, cols], "group": group}


def unpack_int4(entry: dict) -> torch.Tensor:
    rows, cols = entry["shape"]
    packed = entry["int4"].to(torch.int16)
    flat = torch.stack([packed & 15, packed >> 4], dim=1).flatten()[: rows * cols] - 8
    q = flat.view(rows, cols).float()
    group = entry["group"]
    scale = entry["scale"].repeat_interleave(group, dim=1)[:, :cols]
    return q * scale


def export_model(model, path: str | Path, *, int8_scales: Optional[dict] = None, removed: tuple = (),
                 int4_groups: Optional[dict] = None) -> dict:
    """Write ``model``'s effective state to ``path`` in the format above; return
    ``{"path", "bytes", "dense_bytes", "format"}`` (``dense_bytes``: the same state saved dense, float32).
    ``int4_groups``: state key -> group size of the matrices stored as packed INT4."""
    path = Path(path)
    state = effective_state_dict(model)
    int8_scales, int4_groups = int8_scales or {}, int4_groups or {}
    entries, kinds = {}, {"dense": 0, "int8": 0, "sparse": 0, "int4": 0}
    for key, tensor in state.items():
        if key in removed:
            continue
        tensor = tensor.cpu()
        if key in int4_groups and tensor.dim() == 2:
            entries[key] = pack_int4(tensor, int4_groups[key])
            kinds["int4"] += 1
            continue
        scale = int8_scales.get(key)
        values = tensor
        if scale is not None:
            values = torch.clamp(torch.round(tensor / scale.view(-1, *([1] * (tensor.dim() - 1)))), -128, 127).to(torch.int8)
        if tensor.dim() == 2 and tensor.is_floating_point() and float((tensor == 0).float().mean()) >= SPARSE_FROM:
            nonzero = tensor != 0
            entry = {"sparse": values[nonzero].clone(), "mask": torch.from_numpy(np.packbits(nonzero.numpy().ravel())),
                     "shape": list(tensor.shape)}
            kinds["sparse"] += 1
        elif scale is not None:
            entry = {"int8": values.clone()}
            kinds["int8"] += 1
        else:
            entry = {"dense": tensor.clone()}
            kinds["dense"] += 1
        if scale is not None:
            entry["scale"] = scale.detach().float().cpu().clone()
        entries[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "resnetbk-export-1", "entries": entries, "removed": list(removed)}, path)
    dense_path = path.with_name(f".{path.name}.dense")
    torch.save({k: v.cpu().float() if v.is_floating_point() else v.cpu() for k, v in state.items()}, dense_path)
    dense_bytes = dense_path.stat().st_size
    os.unlink(dense_path)
    return {"path": str(path), "bytes": path.stat().st_size, "dense_bytes": dense_bytes, "tensors": kinds,
            "format": "torch.save of per-tensor entries: dense float32, int8 per-channel, packed int4 per group, "
                      "or bitmask-sparse "
                      "(resnetbk.methods.export)"}


def describe_export(export: dict) -> tuple:
    """``(dense / exported size ratio, the sizes in words)`` of an ``export_model`` figure."""
    ratio = export["dense_bytes"] / export["bytes"]
    return ratio, (f"export {export['bytes'] / 2**20:.2f} MiB on disk against {export['dense_bytes'] / 2**20:.2f} MiB "
                   f"dense float32 ({ratio:.2f}x smaller)")


def load_export(path: str | Path, like: Optional[dict] = None) -> dict:
    """The float state dict of an export (removed experts as zeros, shaped as in ``like``)."""
    doc = torch.load(path, map_location="cpu", weights_only=True)
    state = {}
    for key, entry in doc["entries"].items():
        if "int4" in entry:
            state[key] = unpack_int4(entry)
            continue
        scale = entry.get("scale")
        if "sparse" in entry:
            shape = entry["shape"]
            bits = np.unpackbits(entry["mask"].numpy())[: int(np.prod(shape))].astype(bool)
            values = entry["sparse"].float() if entry["sparse"].is_floating_point() or scale is not None else entry["sparse"]
            dense = torch.zeros(int(np.prod(shape)), dtype=values.dtype)
            dense[torch.from_numpy(bits)] = values
            tensor = dense.view(shape)
        elif "int8" in entry:
            tensor = entry["int8"].float()
        else:
            tensor = entry["dense"]
        if scale is not None:
            tensor = tensor * scale.view(-1, *([1] * (tensor.dim() - 1)))
        state[key] = tensor
    for key in doc["removed"]:
        if like is not None and key in like:
            state[key] = torch.zeros_like(like[key])
    return state


class Exporter(Listener):
    """Writes the exported model once every method has made its EXPORT contribution (``order``
    after them): ``state.exports[flag]`` may hold ``int8_scales`` (quantization) and ``removed``
    state keys (pruning's removed experts). The file goes beside the checkpoint, its figures to
    each contributing method's figures and to ``state.exported`` (the reported model size)."""

    order = 100

    def on_export(self, state) -> None:
        if not state.exports or not state.world.is_main:
            return
        scales, int4 = {}, {}
        removed: tuple = ()
        for contribution in state.exports.values():
            scales.update(contribution.get("int8_scales", {}))
            int4.update(contribution.get("int4_groups", {}))
            removed += tuple(contribution.get("removed", ()))
        exported = export_model(state.model, state.run_dir / "exported_model.pt", int8_scales=scales or None,
                                removed=removed, int4_groups=int4 or None)
        for flag in state.exports:
            state.figures.setdefault(flag, {})["export"] = exported
        state.exported = exported
