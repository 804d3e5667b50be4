"""``train_recall``'s checkpoints: an interrupted run goes on from its last epoch and ends where a
run never interrupted ends (same losses, accuracies and weights), and a checkpoint of another
run is not used."""

from __future__ import annotations

import pytest
import torch

from resnetbk.models import ModelOptions, build_model
from resnetbk.recall.mqar import MQARCell, generate
from resnetbk.recall.training import RecallTraining, train_recall

CELL = MQARCell(16, 2, 24)
SETTINGS = RecallTraining(lr=3e-3, epochs=3, batch_size=16, seed=5, target_accuracy=1.0)


class Interrupted(Exception):
    pass


def _model():
    torch.manual_seed(0)
    return build_model(ModelOptions(vocab_size=24, d_model=8, n_layers=1, n_seq=16, dropout=0.0, bk_channels=2))


def _train(checkpoint=None, *, stop_after: int | None = None, identity=None):
    model = _model()
    train, valid = [generate(CELL, 40, seed=1)], [generate(CELL, 20, seed=2)]

    def log(line: str) -> None:
        if stop_after is not None and line.startswith(f"epoch {stop_after}/"):
            raise Interrupted  # as a stop between two epochs, after the checkpoint is saved

    result = train_recall(model, train, valid, SETTINGS, log=log, checkpoint=checkpoint, identity=identity)
    return model, result


def test_an_interrupted_run_resumes_from_its_last_epoch_and_ends_as_an_uninterrupted_one(tmp_path):
    torch.set_num_threads(1)
    whole_model, whole = _train()
    path = tmp_path / "run.ckpt"
    with pytest.raises(Interrupted):
        _train(path, stop_after=1, identity={"run": 1})
    assert path.is_file() and not path.with_name("run.ckpt.partial").exists()
    lines = []
    model = _model()
    train, valid = [generate(CELL, 40, seed=1)], [generate(CELL, 20, seed=2)]
    resumed = train_recall(model, train, valid, SETTINGS, log=lines.append, checkpoint=path, identity={"run": 1})
    assert lines[0] == "resumed from run.ckpt after epoch 1" and len(lines) == 1 + (SETTINGS.epochs - 1)
    assert resumed["history"] == whole["history"] and resumed["steps"] == whole["steps"]
    assert resumed["best_valid_accuracy"] == whole["best_valid_accuracy"]
    for (name, a), b in zip(model.state_dict().items(), whole_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_checkpoint_of_another_run_is_not_used(tmp_path):
    torch.set_num_threads(1)
    path = tmp_path / "run.ckpt"
    with pytest.raises(Interrupted):
        _train(path, stop_after=1, identity={"run": 1})
    lines = []
    model = _model()
    train, valid = [generate(CELL, 40, seed=1)], [generate(CELL, 20, seed=2)]
    result = train_recall(model, train, valid, SETTINGS, log=lines.append, checkpoint=path, identity={"run": 2})
    assert lines[0] == "checkpoint run.ckpt is another run's (or of another --threads); training from the start"
    assert len(result["history"]) == SETTINGS.epochs
    path.write_bytes(b"not a checkpoint")
    lines.clear()
    train_recall(_model(), train, valid, SETTINGS, log=lines.append, checkpoint=path, identity={"run": 2})
    assert lines[0].startswith("checkpoint run.ckpt is unreadable")


def test_a_run_stopped_early_at_its_target_and_resumed_trains_no_further(tmp_path):
    """A checkpoint saved at the epoch that reached ``target_accuracy`` ends the run there on resume."""
    torch.set_num_threads(1)
    settings = RecallTraining(lr=3e-3, epochs=3, batch_size=16, seed=5, target_accuracy=0.0)
    train, valid = [generate(CELL, 40, seed=1)], [generate(CELL, 20, seed=2)]
    path = tmp_path / "run.ckpt"
    first = train_recall(_model(), train, valid, settings, checkpoint=path, identity={"run": 1})
    assert len(first["history"]) == 1 and path.is_file()  # stopped after its first epoch
    lines = []
    again = train_recall(_model(), train, valid, settings, log=lines.append, checkpoint=path, identity={"run": 1})
    assert lines == ["resumed from run.ckpt after epoch 1"] and again["history"] == first["history"]


def test_a_checkpoint_of_another_model_definition_is_not_used(tmp_path):
    torch.set_num_threads(1)
    path = tmp_path / "run.ckpt"
    with pytest.raises(Interrupted):
        _train(path, stop_after=1, identity={"run": 1})
    torch.manual_seed(0)
    wider = build_model(ModelOptions(vocab_size=24, d_model=8, n_layers=1, n_seq=16, dropout=0.0, bk_channels=3))
    train, valid = [generate(CELL, 40, seed=1)], [generate(CELL, 20, seed=2)]
    lines = []
    result = train_recall(wider, train, valid, SETTINGS, log=lines.append, checkpoint=path, identity={"run": 1})
    assert lines[0] == "checkpoint run.ckpt holds another model's weights; training from the start"
    assert len(result["history"]) == SETTINGS.epochs
