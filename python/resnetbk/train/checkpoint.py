"""The checkpoint written after every epoch (atomically) and read back by ``--resume``."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: Path, payload: dict) -> None:
    """``torch.save`` to a temporary file, then an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_run(state) -> None:
    """The run so far (``TrainState``): config, model, optimizer, schedule, scaler, progress, RNG."""
    save_checkpoint(state.run_dir / CHECKPOINT, {
        "config": state.config.to_dict(), "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(),
        "progress": dataclasses.asdict(state.progress), "rng": rng_state(state.device),
    })


def load_run(state, progress_type) -> bool:
    """Restore ``state`` from its run folder's checkpoint, if there is one; False if there is none.
    A checkpoint of another configuration is an error (resuming it would mix two runs)."""
    path = state.run_dir / CHECKPOINT
    if not path.is_file():
        return False
    ckpt = torch.load(path, map_location=state.device, weights_only=False)
    if ckpt["config"] != state.config.to_dict():
        raise ValueError(f"--resume: {path} was written by a different configuration; "
                         "use the same settings or another --output-dir")
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.scaler.load_state_dict(ckpt["scaler"])
    state.progress = progress_type(**ckpt["progress"])
    set_rng_state(ckpt["rng"])
    return True
