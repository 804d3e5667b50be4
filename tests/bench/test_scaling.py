"""``python -m resnetbk.bench scaling``: a small measured study, the stopping rule, and the
crossover and target arithmetic."""

import json

import pytest

from resnetbk.bench import scaling
from resnetbk.bench.cli import main as cli_main

SMALL = ["--d-model", "16", "--n-layers", "2", "--vocab-size", "50", "--tokens-per-step", "64", "--repeats", "1",
         "--threads", "1"]


def test_a_small_study_measures_every_cell_and_writes_its_files(tmp_path):
    out = tmp_path / "scaling"
    code = cli_main(["scaling", "--seq-lens", "16,64", "--models", "transformer_baseline,resnet_bk_baseline",
                     "--output-dir", str(out), "--budget-s", "60", *SMALL])
    assert code == 0
    doc = json.loads((out / "scaling.json").read_text())
    cells = doc["cells"]
    assert len(cells) == 2 * 2 * 2 and all(c["status"] == "ok" for c in cells), cells
    for c in cells:
        assert c["train_s_per_token"] > 0 and c["forward_s_per_token"] > 0 and c["unpriced_ops"] == {}
        assert c["batch"] == 64 // c["seq_len"] and c["train_flops_per_token"] > c["forward_flops_per_token"] > 0
    flops = {(c["model"], c["seq_len"]): c["train_flops_per_token"] for c in cells if c["scope"] == "blocks"}
    # Attention's work per token grows with N; the BK-Core blocks' does not (within the routing's noise).
    assert flops[("transformer_baseline", 64)] > 1.2 * flops[("transformer_baseline", 16)]
    assert abs(flops[("resnet_bk_baseline", 64)] / flops[("resnet_bk_baseline", 16)] - 1) < 0.05
    text = (out / "scaling.md").read_text()
    assert "Crossover (blocks)" in text and "## Targets" in text and "| 64 | 1 |" in text
    assert (out / "scaling.png").stat().st_size > 10_000
    assert doc["complete"] is True
    assert doc["run_info"]["versions"]["torch"] and "git_revision" in doc["run_info"]  # what a rerun needs


def test_an_interrupted_study_keeps_the_cells_it_measured(tmp_path, monkeypatch):
    calls = []

    def measured_then_interrupted(model, n, scope, settings):
        calls.append((model, n, scope))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return {"status": "over budget", "detail": "stand-in"}

    monkeypatch.setattr(scaling, "run_cell", measured_then_interrupted)
    out = tmp_path / "scaling"
    with pytest.raises(KeyboardInterrupt):
        cli_main(["scaling", "--seq-lens", "16", "--models", "transformer_baseline,resnet_bk_baseline",
                  "--output-dir", str(out), *SMALL])
    doc = json.loads((out / "scaling.json").read_text())
    assert doc["complete"] is False and [(c["model"], c["scope"]) for c in doc["cells"]] == [
        ("transformer_baseline", "blocks"), ("transformer_baseline", "end_to_end")]


def test_a_model_over_its_budget_stops_there_and_the_study_goes_on(tmp_path):
    out = tmp_path / "scaling"
    code = cli_main(["scaling", "--seq-lens", "16,32", "--models", "resnet_bk_baseline", "--output-dir", str(out),
                     "--budget-s", "1e-9", *SMALL])
    assert code == 0
    cells = json.loads((out / "scaling.json").read_text())["cells"]
    first = [c for c in cells if c["seq_len"] == 16]
    later = [c for c in cells if c["seq_len"] == 32]
    assert all(c["status"] == "over budget" for c in first)
    assert all(c["detail"] == "not run: over budget at N = 16" for c in later)
    assert "Stopped cells" in (out / "scaling.md").read_text()


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert cli_main(["scaling", "--seq-lens", "16,x", "--output-dir", str(tmp_path)]) == 2
    assert "--seq-lens: expected comma-separated positive integers" in capsys.readouterr().err
    assert cli_main(["scaling", "--models", "rnn", "--output-dir", str(tmp_path)]) == 2
    assert "--models: expected names from" in capsys.readouterr().err


def _cells(times: dict, scope="end_to_end", memory=None):
    cells = []
    for (model, n), t in times.items():
        if t is None:
            cells.append({"model": model, "seq_len": n, "scope": scope, "status": "out of memory"})
        else:
            cells.append({"model": model, "seq_len": n, "scope": scope, "status": "ok", "train_s_per_token": t,
                          "peak_mb": (memory or {}).get((model, n), 1.0)})
    return cells


def test_crossover_speedup_and_flatness_arithmetic():
    t, r = scaling.REFERENCE, scaling.CANDIDATE
    cells = _cells({(t, 1024): 1.0, (r, 1024): 2.0, (t, 2048): 1.5, (r, 2048): 1.4, (t, 4096): 3.0, (r, 4096): 1.5,
                    (t, 8192): None, (r, 8192): 1.6})
    assert scaling.crossover(cells, "end_to_end") == 2048
    assert scaling.speedup(cells, "end_to_end", 4096) == 2.0 and scaling.speedup(cells, "end_to_end", 8192) is None
    ratio, count = scaling.flatness(cells)
    assert count == 4 and abs(ratio - 2.0 / 1.4) < 1e-12
    # Slower again at a longer N: the crossover is the start of the last stretch where it stays faster.
    cells = _cells({(t, 128): 1.0, (r, 128): 0.5, (t, 256): 1.0, (r, 256): 2.0, (t, 512): 3.0, (r, 512): 1.0})
    assert scaling.crossover(cells, "end_to_end") == 512
    assert scaling.crossover(_cells({(t, 128): 1.0, (r, 128): 2.0}), "end_to_end") is None
    held = {row[0]: row[2] for row in scaling.targets(_cells({(t, 8192): None, (r, 8192): 1.0}))}
    assert held["end to end training tokens/s at N = 8,192: at least 2x the Transformer's"] is True


def test_the_default_grid_is_small_and_the_committed_one_is_named():
    from resnetbk.bench.scaling import GRIDS, parse_args

    small = parse_args([])
    assert small.grid == "small" and small.seq_lens == "128,512,2048" and small.tokens_per_step == 4096
    assert small.models.split(",") == ["transformer_baseline", "resnet_bk_baseline", "lstm", "mamba"]
    committed = parse_args(["--grid", "committed"])
    assert committed.seq_lens == ",".join(str(2**k) for k in range(7, 17)) and committed.tokens_per_step == 32_768
    assert (committed.repeats, committed.budget_s) == (3, 60.0) == (GRIDS["committed"]["repeats"],
                                                                    GRIDS["committed"]["budget_s"])
    mine = parse_args(["--grid", "committed", "--seq-lens", "256", "--repeats", "5"])  # an option given wins
    assert (mine.seq_lens, mine.repeats, mine.tokens_per_step) == ("256", 5, 32_768)
