"""``bench recall`` end to end on a tiny grid: the files, the learning-rate choice on validation,
--resume keeping finished runs, attention learning what a position-wise model cannot, every
harness model causal, bad options as one line."""

import json

import pytest
import torch

from resnetbk.bench import recall
from resnetbk.bench.cli import main as cli_main
from resnetbk.measure.causality import probe_causality
from resnetbk.recall.mqar import MQARCell, generate
from resnetbk.recall.training import RecallTraining, query_logits, recall_optimizer

TINY = ["--seq-lens", "16", "--pairs", "2", "--vocab-size", "16", "--train-examples", "64", "--valid-examples", "16",
        "--test-examples", "16", "--epochs", "1", "--batch-size", "32", "--threads", "1", "--quiet"]


def test_a_tiny_grid_writes_its_files_and_resumes_without_retraining(tmp_path, capsys):
    args = ["recall", "--models", "transformer,no_mixer", "--lrs", "1e-3,3e-3", "--seeds", "0,1",
            "--output-dir", str(tmp_path), *TINY]
    assert cli_main(args) == 0
    doc = json.loads((tmp_path / "recall.json").read_text())
    assert (tmp_path / "recall.md").is_file() and (tmp_path / "recall.png").stat().st_size > 0
    for name in ("transformer", "no_mixer"):
        m = doc["models"][name]
        assert {"0.001", "0.003"} <= set(m["lr_sweep_valid_accuracy"]) and len(m["lr_sweep_valid_accuracy"]) <= 3  # + an edge
        best = max(m["lr_sweep_valid_accuracy"].items(), key=lambda kv: (kv[1], -float(kv[0])))
        assert m["chosen_lr"] == float(best[0])  # chosen on validation accuracy
        assert m["seeds"] == [0, 1] and m["test_accuracy"]["n"] == 2 and m["causal"] is True
        assert set(m["test_by_cell"]) == {"seq16-pairs2"}
    edges = sum(len(doc["models"][n]["lr_sweep_valid_accuracy"]) - 2 for n in ("transformer", "no_mixer"))
    assert len(list(tmp_path.glob("runs/*/*.json"))) == 2 * (2 + 1) + edges
    assert not list(tmp_path.glob("runs/*/*.ckpt*"))  # a finished run leaves no checkpoint
    assert doc["git_revision"] is not None or doc["versions"]
    assert doc["threads"] == 1 and all(json.loads(p.read_text())["threads"] == 1 for p in tmp_path.glob("runs/*/*.json"))
    capsys.readouterr()
    assert cli_main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, kept") == 6 + edges and "training" not in out.replace("training;", "")
    assert json.loads((tmp_path / "recall.json").read_text())["models"] == doc["models"]
    assert doc["complete"] is True and doc["missing_runs"] == []
    # --report with a run missing: the files say what is missing, and nothing is trained.
    (tmp_path / "runs" / "no_mixer" / "lr0.003_seed0.json").unlink()
    assert cli_main([*args, "--report"]) == 0
    out = capsys.readouterr().out
    partial = json.loads((tmp_path / "recall.json").read_text())
    assert "training" not in out and partial["complete"] is False
    assert {"model": "no_mixer", "lr": 0.003, "seed": 0} in partial["missing_runs"]
    assert partial["models"]["no_mixer"]["chosen_lr"] is None and partial["models"]["transformer"] == doc["models"]["transformer"]
    text = (tmp_path / "recall.md").read_text()
    assert "**Partial**" in text and "- no_mixer: lr 0.003 seed 0" in text
    assert "| 0, 1 |" in text  # the transformer's row names the seeds its accuracy is over


def test_attention_recalls_where_a_position_wise_model_can_only_guess():
    """16 words, 2 pairs: a Transformer learns to recall in seconds; the no_mixer control cannot
    see the pairs and stays near the 1-in-8 guess among the values."""
    config = recall.RecallConfig(vocab_size=16, seq_lens=(16,), pairs=(2,), train_examples=2000, valid_examples=100,
                                 test_examples=200, epochs=8, batch_size=32, lrs=(3e-3,))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    attention = recall.run_one(config, "transformer", 3e-3, seed=0)
    position_wise = recall.run_one(config, "no_mixer", 3e-3, seed=0)
    assert attention["test_accuracy"] > 0.45
    assert position_wise["test_accuracy"] < 0.3


@pytest.mark.parametrize("name", list(recall.MODELS))
def test_every_harness_model_is_causal_and_scores_only_the_queries(name):
    config = recall.RecallConfig(vocab_size=32, seq_lens=(24,), pairs=(3,), models=(name,))
    torch.manual_seed(0)
    model = recall.build_recall_model(name, config)
    assert probe_causality(model, 32, 24).causal
    data = generate(MQARCell(24, 3, 32), 5, seed=0)
    logits, targets = query_logits(model, data.inputs, data.labels)
    assert logits.shape == (15, 32) and targets.tolist() == data.labels[data.labels >= 0].tolist()
    if name == "resnet_bk_spectral_z":
        assert all(block.bk.shift is not None and block.bk.channels == 8 for block in model.blocks)
    if name == "no_mixer":
        assert all(block.bk is None for block in model.blocks)


@pytest.mark.parametrize("option, message", [
    (["--models", "gpt5"], "error: --models: expected names from transformer"),
    (["--lrs", "fast"], "error: --lrs: expected comma-separated numbers"),
    (["--lrs", "0"], "error: --lrs: expected positive learning rates"),
    (["--seeds", "1,1"], "error: --seeds: expected distinct non-negative integers"),
    (["--seeds", "-1"], "error: --seeds: expected distinct non-negative integers"),
    (["--lrs", "1e-3,0.001"], "error: --lrs: expected distinct learning rates"),
    (["--seq-lens", "8", "--pairs", "4"], "error: --seq-lens/--pairs: no cell fits"),
    (["--epochs", "0"], "error: epochs: expected a positive integer"),
    (["--threads", "0"], "error: --threads: expected a positive integer"),
])
def test_bad_options_are_one_line(option, message, capsys, tmp_path):
    assert cli_main(["recall", "--output-dir", str(tmp_path), *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_weight_decay_spares_the_time_scales():
    """Spectral z's log_eta and Mamba's A_log keep their long time scales: no decay on them (nor on
    norms, biases, embeddings); the weight matrices get Zoology's 0.1."""
    config = recall.RecallConfig(vocab_size=32, seq_lens=(24,), pairs=(3,))
    for name, spared in (("resnet_bk_spectral_z", "log_eta"), ("mamba", "A_log")):
        model = recall.build_recall_model(name, config)
        optimizer = recall_optimizer(model, RecallTraining(weight_decay=0.1))
        decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
        names = {n for n, p in model.named_parameters() if id(p) in decayed}
        assert not any(spared in n or "norm" in n or "embedding" in n for n in names)
        assert any("weight" in n for n in names)


def test_a_sweep_whose_edge_wins_goes_one_rate_further():
    config = recall.RecallConfig(lrs=(3e-4, 1e-3, 3e-3), models=("resnet_bk",))

    def runs(**accuracy):
        return [{"model": "resnet_bk", "seed": 0, "lr": float(lr.replace("_", ".").replace("e", "e-")),
                 "valid_accuracy": a} for lr, a in accuracy.items()]

    top = runs(**{"3e4": 0.02, "1e3": 0.05, "3e3": 0.09})
    assert recall.edge_rate(top, config, "resnet_bk") == 0.009
    assert recall.choose_lr(top, config) == {}  # waits for the edge's run
    top.append({"model": "resnet_bk", "seed": 0, "lr": 0.009, "valid_accuracy": 0.07})
    assert recall.choose_lr(top, config) == {"resnet_bk": 3e-3}  # and it may lose
    bottom = runs(**{"3e4": 0.30, "1e3": 0.10, "3e3": 0.05})
    assert recall.edge_rate(bottom, config, "resnet_bk") == 9e-5
    noise = runs(**{"3e4": 0.012, "1e3": 0.008, "3e3": 0.009})  # nothing learnt: no trend to follow
    assert recall.edge_rate(noise, config, "resnet_bk") is None
    assert recall.choose_lr(noise, config) == {"resnet_bk": 3e-4}
    inside = runs(**{"3e4": 0.5, "1e3": 0.99, "3e3": 0.6})
    assert recall.edge_rate(inside, config, "resnet_bk") is None
