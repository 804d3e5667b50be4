"""Training and scoring a language model on MQAR: the loss and the accuracy only at the queries.

The model's hidden states are computed for every position (the blocks are causal), the LM head
only at the query positions: with Zoology's vocabulary of 8,192 the head at every position would
be most of the work for a few labelled tokens per sequence.

The recipe (stated in the results): AdamW with Zoology's weight decay 0.1 on the weight matrices
only (the benchmark's own groups, ``models.parameter_groups``: not on norms, biases, embeddings,
spectral z's ``log_eta`` or Mamba's ``A_log``, which decay would pull away from their long time
scales), a linear warm-up over
the first ``warmup_fraction`` of the steps, then a cosine decay to 0 (Zoology's schedule, per
step rather than per epoch), gradients clipped at norm 1, no dropout. Every training cell's
batches are shuffled together, so one model learns the whole grid at once, as Zoology trains on
its mixture. Training stops early once the validation accuracy reaches ``target_accuracy``
(Zoology's early stopping at 0.99).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..models.parameter_groups import parameter_groups
from ..train.optim import lr_factor
from ..validate import check_int, check_number
from .mqar import IGNORE_INDEX, MQARData

#: Raised when the recipe changes: a finished run of another recipe is not kept by ``--resume``.
RECIPE_VERSION = 2


def distance_bucket(distance: int) -> int:
    """The key-to-query distance's bucket, ``[1, 2), [2, 4), [4, 8), ...``, named by its lower end
    (the largest power of two at most ``distance``)."""
    return 1 << (max(1, int(distance)).bit_length() - 1)


@dataclass(frozen=True)
class RecallTraining:
    lr: float = 1e-3
    epochs: int = 16
    batch_size: int = 64
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    clip_norm: float = 1.0
    target_accuracy: float = 0.99
    seed: int = 0

    def __post_init__(self) -> None:
        check_number(self, "lr", low=0.0, low_open=True)
        check_int(self, "epochs", low=1)
        check_int(self, "batch_size", low=1)
        check_number(self, "weight_decay", low=0.0)
        check_number(self, "warmup_fraction", low=0.0, high=1.0, high_open=True)
        check_number(self, "clip_norm", low=0.0, low_open=True)
        check_number(self, "target_accuracy", low=0.0, high=1.0)


def query_logits(model, inputs: torch.Tensor, labels: torch.Tensor) -> tuple:
    """``(logits, targets)`` at the query positions only (``labels != IGNORE_INDEX``), row-major."""
    hidden = model.features(inputs)
    at = labels != IGNORE_INDEX
    return model.lm_head(hidden[at]), labels[at]


def _batches(data: list, batch_size: int, generator: torch.Generator) -> list:
    """Every cell's examples in batches of one cell each (a shuffled order within a cell), all the
    batches in one shuffled order."""
    out = []
    for cell_index, part in enumerate(data):
        order = torch.randperm(len(part), generator=generator)
        out += [(cell_index, order[i:i + batch_size]) for i in range(0, len(part), batch_size)]
    return [out[i] for i in torch.randperm(len(out), generator=generator).tolist()]


def _lr_at(step: int, total: int, settings: RecallTraining) -> float:
    """The benchmark's schedule (``train.optim.lr_factor``): warm-up, then a cosine to 0."""
    warmup = max(1, round(settings.warmup_fraction * total)) if settings.warmup_fraction > 0 else 0
    return settings.lr * lr_factor(step, total, warmup, 0.0)


def recall_optimizer(model, settings: RecallTraining) -> torch.optim.AdamW:
    """AdamW at ``settings.lr`` with weight decay on the weight matrices only (``parameter_groups``)."""
    return torch.optim.AdamW(parameter_groups(model, False, settings.weight_decay), lr=settings.lr)


def _save_checkpoint(path: Path, state: dict) -> None:
    """Written whole or not at all (a temporary file, then a rename): an interruption while saving
    leaves the previous epoch's checkpoint."""
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)


def _load_checkpoint(path: Optional[Path], identity: dict, log) -> Optional[dict]:
    """The checkpoint at ``path`` if it is this run's (same ``identity``), else None."""
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=False)
    except Exception as error:  # a damaged file: start again rather than fail the run
        if log:
            log(f"checkpoint {path.name} is unreadable ({type(error).__name__}); training from the start")
        return None
    if state.get("identity") != identity:
        if log:
            log(f"checkpoint {path.name} is another run's (or of another --threads); training from the start")
        return None
    return state


def _resume(checkpoint: Optional[Path], identity: dict, model, optimizer, generator: torch.Generator, log) -> Optional[dict]:
    """This run's checkpoint, loaded into the model, the optimizer, the generator and torch's RNG;
    None (and nothing loaded) where there is none of this run's."""
    state = _load_checkpoint(checkpoint, identity, log)
    if state is None:
        return None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:  # the model's definition changed under the same name
        if log:
            log(f"checkpoint {checkpoint.name} holds another model's weights; training from the start")
        return None
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return state


def _train_epoch(model, optimizer, train: list, settings: RecallTraining, generator: torch.Generator,
                 step: int, total: int) -> tuple:
    """One epoch over every cell's batches: ``(loss sum, batches, the step count after it)``."""
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    loss_sum, batches = 0.0, 0
    for cell_index, rows in _batches(train, settings.batch_size, generator):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, total, settings)
        part = train[cell_index]
        logits, targets = query_logits(model, part.inputs[rows], part.labels[rows])
        loss = F.cross_entropy(logits.float(), targets)
        aux = model.aux_losses().get("load_balance")
        total_loss = loss if aux is None else loss + 0.01 * aux
        optimizer.zero_grad(set_to_none=True)
        total_loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, settings.clip_norm)
        optimizer.step()
        loss_sum += loss.item()
        batches += 1
        step += 1
    return loss_sum, batches, step


def train_recall(model, train: list, valid: list, settings: RecallTraining, *,
                 log: Optional[Callable[[str], None]] = None, checkpoint: Optional[Path] = None,
                 identity: Optional[dict] = None) -> dict:
    """Train ``model`` on the cells ``train`` (a list of ``MQARData``), validating on ``valid``
    after every epoch. Returns the history (loss and accuracy per epoch), the best validation
    accuracy (with the model's weights at that epoch restored), the epochs and steps run and the
    training time.

    With ``checkpoint`` (a file path), the state after every epoch (weights, optimizer, the
    shuffling generator, torch's RNG, the history and the best epoch's weights) is saved there,
    and a run that finds a checkpoint of the same ``identity`` (what decides the run: the caller's
    task, model, rate and seed) goes on from it: interrupted and resumed, it trains the same steps
    on the same batches as a run never interrupted (tested). The caller removes the file once the
    run's results are written."""
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = recall_optimizer(model, settings)
    steps_per_epoch = sum(math.ceil(len(part) / settings.batch_size) for part in train)
    total = steps_per_epoch * settings.epochs
    history, best, best_state, step, spent, first_epoch = [], -1.0, None, 0, 0.0, 0
    # The thread count is part of it: the same batches on other threads round differently.
    identity = {"identity": identity, "training": asdict(settings), "recipe": RECIPE_VERSION,
                "threads": torch.get_num_threads()}
    resumed = _resume(checkpoint, identity, model, optimizer, generator, log)
    if resumed is not None:
        history, best, best_state = resumed["history"], resumed["best"], resumed["best_state"]
        step, spent, first_epoch = resumed["step"], resumed["training_time_s"], len(resumed["history"])
        if log:
            log(f"resumed from {checkpoint.name} after epoch {first_epoch}")
    started = time.perf_counter()
    done = first_epoch > 0 and history[-1]["valid_accuracy"] >= settings.target_accuracy  # stopped early there
    for epoch in range(first_epoch, 0 if done else settings.epochs):
        loss_sum, batches, step = _train_epoch(model, optimizer, train, settings, generator, step, total)
        if not math.isfinite(loss_sum):
            history.append({"epoch": epoch + 1, "train_loss": loss_sum / batches, "valid_accuracy": float("nan")})
            if log:
                log(f"epoch {epoch + 1}: the loss is not finite; stopped")
            break
        accuracy = overall_accuracy([evaluate(model, part) for part in valid])
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / batches, "valid_accuracy": accuracy})
        if accuracy > best:
            best = accuracy
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if checkpoint is not None:
            _save_checkpoint(checkpoint, {
                "identity": identity, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                "best": best, "best_state": best_state, "step": step,
                "training_time_s": spent + time.perf_counter() - started})
        if log:
            log(f"epoch {epoch + 1}/{settings.epochs}: train loss {loss_sum / batches:.3f}, valid accuracy {accuracy:.3f}")
        if accuracy >= settings.target_accuracy:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"history": history, "best_valid_accuracy": max(best, 0.0), "epochs_run": len(history), "steps": step,
            "steps_per_epoch": steps_per_epoch, "training_time_s": spent + time.perf_counter() - started}


@torch.no_grad()
def evaluate(model, data: MQARData, batch_size: int = 256) -> dict:
    """Accuracy at the queries of ``data`` overall and by key-to-query distance bucket."""
    was_training = model.training
    model.eval()
    correct_parts = []
    try:
        for start in range(0, len(data), batch_size):
            logits, targets = query_logits(model, data.inputs[start:start + batch_size],
                                           data.labels[start:start + batch_size])
            correct_parts.append(logits.argmax(-1) == targets)
    finally:
        model.train(was_training)
    correct = torch.cat(correct_parts)
    buckets = torch.tensor([distance_bucket(d) for d in data.distances.tolist()])
    by_distance = {}
    for bucket in sorted(set(buckets.tolist())):
        chosen = buckets == bucket
        by_distance[str(bucket)] = {"correct": int(correct[chosen].sum()), "queries": int(chosen.sum())}
    return {"cell": data.cell.name, "correct": int(correct.sum()), "queries": correct.numel(),
            "accuracy": correct.float().mean().item(), "by_distance": by_distance}


def overall_accuracy(scores: list) -> float:
    """The accuracy over every query of several ``evaluate`` results."""
    queries = sum(s["queries"] for s in scores)
    return sum(s["correct"] for s in scores) / queries if queries else float("nan")
