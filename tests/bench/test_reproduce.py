"""The reproduction of PyTorch's word_language_model example: its protocol's parts (SGD, the
plateau schedule, text order, the LSTM state carried across windows, the example's Transformer),
each checked, and both runs end to end at reduced length."""

import json

import pytest
import torch

from helpers import make_config
from resnetbk.bench.cli import main as cli_main
from resnetbk.bench.recipe import make_model
from resnetbk.bench.reproduce import REPRODUCTIONS, compare, reproduction_config
from resnetbk.measure.causality import probe_causality
from resnetbk.models import ModelOptions, build_model
from resnetbk.train.optim import make_optimizer, make_scheduler


def test_the_lstm_run_is_the_examples_model_and_protocol():
    config = reproduction_config("word_lm_lstm")
    assert (config.model.architecture, config.optimizer, config.lr, config.lr_schedule, config.plateau_factor) == (
        "lstm", "sgd", 20.0, "plateau", 0.25)
    assert (config.model.n_seq, config.batch_size, config.eval_batch_size, config.grad_clip, config.epochs) == (35, 20, 10, 0.25, 12)
    assert config.carry_state and not config.shuffle_windows and not config.model.tie_embeddings
    model = make_model(config, 33_278)
    lstms = [m for m in model.modules() if isinstance(m, torch.nn.LSTM)]
    assert [(m.input_size, m.hidden_size) for m in lstms] == [(200, 200), (200, 200)]
    assert isinstance(model.final_norm, torch.nn.Identity) and model.position_embedding is None
    # The example's parameter count: encoder, two LSTM layers (two biases each), decoder with bias.
    expected = 33_278 * 200 + 2 * (4 * 200 * (200 + 200) + 8 * 200) + 200 * 33_278 + 33_278
    assert model.parameter_counts()["total"] == expected
    assert model.token_embedding.weight.abs().max() <= 0.1 and model.lm_head.bias.abs().max() == 0
    assert isinstance(make_optimizer(model, config), torch.optim.SGD)


def test_the_transformer_run_is_post_norm_causal_with_sinusoidal_positions():
    config = reproduction_config("word_lm_transformer")
    assert config.epochs == 6 and config.model.n_heads == 2 and config.model.d_ff == 200 and not config.carry_state
    torch.manual_seed(0)
    model = make_model(config.with_model(n_seq=16), 50)
    layers = [m for m in model.modules() if isinstance(m, torch.nn.TransformerEncoderLayer)]
    assert len(layers) == 2 and not layers[0].norm_first and layers[0].linear1.out_features == 200
    assert model.position_embedding is None and model.fixed_positions.shape == (16, 200)
    assert probe_causality(model, 50, 16).causal


def test_a_carried_state_equals_one_long_window():
    # Two consecutive windows with the state carried give exactly the outputs of one window twice
    # as long: the carried state is the true recurrent state (detached only for the gradient).
    torch.manual_seed(0)
    model = build_model(ModelOptions("lstm", 30, 16, 2, 24, dropout=0.0, lstm_hidden=16, final_norm=False)).eval()
    tokens = torch.randint(30, (3, 24))
    whole = model(tokens)
    with model.state_carry(True):
        halves = torch.cat([model(tokens[:, :12]), model(tokens[:, 12:])], dim=1)
    torch.testing.assert_close(halves, whole)
    fresh = model(tokens[:, 12:])  # outside the context: a fresh state again
    assert not torch.allclose(fresh, whole[:, 12:])
    with model.state_carry(True):
        model(tokens[:, :12])
        with pytest.raises(ValueError, match="carried over from a batch of 3 rows, got 2"):
            model(tokens[:2, 12:])


def test_the_plateau_schedule_divides_by_four_after_an_epoch_that_is_not_strictly_better():
    config = make_config(optimizer="sgd", lr=20.0, lr_schedule="plateau")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = make_scheduler(optimizer, config, total_steps=100)
    lrs = []
    for valid_loss in (5.0, 4.9, 4.95, 4.9, 4.8):
        scheduler.step(valid_loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == [20.0, 20.0, 5.0, 1.25, 1.25]


@pytest.mark.parametrize("fields,message", [
    (dict(architecture="transformer", carry_state=True, shuffle_windows=False), "carry_state: only the LSTM"),
    (dict(architecture="lstm", carry_state=True), "carry_state: needs windows in text order"),
    (dict(lr_schedule="plateau", warmup_steps=5), "warmup_steps: only the 'cosine' schedule warms up"),
    (dict(optimizer="adam"), "optimizer: expected one of \\('adamw', 'sgd'\\)"),
    (dict(plateau_factor=1.5), "plateau_factor: expected a number in \\(0.0, 1.0\\)"),
    (dict(transformer_style="post"), "transformer_style: expected one of"),
])
def test_bad_protocol_settings_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        make_config(**fields)


def test_both_runs_end_to_end_at_reduced_length(tmp_path, tiny_data, capsys):
    out = tmp_path / "reproduction"
    code = cli_main(["reproduce", "--data-dir", str(tiny_data), "--output-dir", str(out), "--device", "cpu",
                     "--epochs", "2", "--threads", "1", "--quiet"])
    assert code == 0
    doc = json.loads((out / "reproduction.json").read_text())
    rows = {r["name"]: r for r in doc["rows"]}
    assert list(rows) == list(REPRODUCTIONS)
    for name, row in rows.items():
        assert row["shortened"] and row["verdict"].startswith("shortened run")
        assert row["published_test_perplexity"] == REPRODUCTIONS[name][2]
        assert row["test_perplexity"] > 1 and len(row["valid_perplexity_by_epoch"]) == 2
        result = json.loads((out / f"{name}_results.json").read_text())
        assert result["causal"] is True and result["config"]["optimizer"] == "sgd"
    markdown = (out / "reproduction.md").read_text()
    assert "114.95" in markdown and "195.85" in markdown
    assert cli_main(["reproduce", "--which", "word_lm_gru", "--output-dir", str(out)]) == 2
    assert "--which: expected names from word_lm_lstm, word_lm_transformer" in capsys.readouterr().err


def test_a_full_length_run_gets_a_verdict_against_the_published_figure():
    class Results:
        test_perplexity, best_valid_perplexity, steps, training_time = 120.0, 125.0, 100, 1.0
        epoch_perplexities, config = [130.0, 125.0], {"epochs": 12}

    assert compare("word_lm_lstm", Results, shortened=False)["verdict"] == "reproduced (within 10%)"
    Results.test_perplexity = 140.0
    assert compare("word_lm_lstm", Results, shortened=False)["verdict"].startswith("not reproduced: 22% above")
