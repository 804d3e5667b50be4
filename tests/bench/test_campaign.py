"""``bench campaign``: a tiny campaign (a learning-rate sweep, two rows, two seeds) stopped after
every run and continued gives the same results as one run straight through (a run resumed from
its checkpoint mid-way is ``test_bench``'s resume test); a finished run is never rerun, whatever
threads it ran with; a failed run does not stop the others; runs at once (``--jobs``) give the
same results; a malformed campaign file is one line that names its place."""

import json

import pytest

from resnetbk.bench import campaign as campaign_module
from resnetbk.bench.campaign import CampaignRunner, choose_rates, main, sweep_values
from resnetbk.bench.campaign_file import CampaignError, LRSweep, load_campaign
from resnetbk.train.results import BenchmarkResults

TINY = {"model": {"d_model": 16, "n_layers": 2, "n_seq": 16}, "batch_size": 4, "epochs": 2, "max_train_tokens": 1000,
        "eval_batch_size": 8, "threads": 1}


def _write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def _campaign(tmp_path, tiny_data, name="tiny.json", output="out") -> str:
    return _write(tmp_path / name, {
        "output_dir": str(tmp_path / output), "data_dir": str(tiny_data),
        "lr_sweep": {"preset": "smoke", "seed": 1, "values": [1e-3, 3e-3], "extend": 0},
        "runs": [
            {"model": "resnet_bk_baseline", "preset": "smoke", "seeds": [1, 2], "lr": "swept", "overrides": TINY},
            {"name": "transformer_fixed", "model": "transformer_baseline", "preset": "smoke", "seed": 1, "lr": 2e-3,
             "overrides": TINY},
        ]})


def _figures(folder) -> dict:
    """Every results file's numbers that do not depend on the clock."""
    out = {}
    for path in sorted(folder.glob("**/*_results.json")):
        r = BenchmarkResults.load(path)
        out[str(path.relative_to(folder))] = (r.epoch_losses, r.best_valid_perplexity, r.test_perplexity, r.steps,
                                              r.config["lr"], r.config["seed"])
    return out


def test_an_interrupted_campaign_continues_to_the_same_results(tmp_path, tiny_data, capsys):
    straight = CampaignRunner(load_campaign(_campaign(tmp_path, tiny_data, "a.json", "straight")), quiet=True,
                              separate_process=False)
    plan = straight.run()
    assert not plan["pending"] and len(plan["tasks"]) == 5  # 2 sweep runs, 2 + 1 runs
    chosen = plan["chosen"]["resnet_bk_baseline"]
    sweep = {lr: BenchmarkResults.load(tmp_path / "straight" / "lr_sweep" / f"resnet_bk_baseline_lr{lr:g}_results.json")
             for lr in (1e-3, 3e-3)}
    assert chosen == min(sweep, key=lambda lr: sweep[lr].best_valid_perplexity)  # chosen on validation
    for seed in (1, 2):
        ran = BenchmarkResults.load(tmp_path / "straight" / f"seed_{seed}" / "resnet_bk_baseline_results.json")
        assert ran.config["lr"] == chosen and ran.config["epochs"] == 2
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["models"]["resnet_bk_baseline"]["test_perplexity"]["n"] == 2
    assert "transformer_fixed" in summary["models"] and (tmp_path / "straight" / "report.md").is_file()
    assert (tmp_path / "straight" / "training_curves.png").stat().st_size > 0
    assert "training_curves.png" in (tmp_path / "straight" / "report.md").read_text()  # the report shows it
    doc = json.loads((tmp_path / "straight" / "campaign.json").read_text())
    assert doc["done"] == doc["total"] == 5 and doc["chosen_lr"] == {"resnet_bk_baseline": chosen}

    # The same campaign, stopped after every single run and started again each time.
    path = _campaign(tmp_path, tiny_data, "b.json", "cut")
    for _ in range(5):
        CampaignRunner(load_campaign(path), quiet=True, separate_process=False).run(stop_after=1)
    assert _figures(tmp_path / "cut") == _figures(tmp_path / "straight")
    # Finished: nothing is trained again.
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "cut").glob("**/*_results.json")}
    assert main([path, "--quiet"]) == 0
    assert "training" not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cut").glob("**/*_results.json")} == before


def test_a_run_identical_to_a_finished_one_is_copied_not_trained(tmp_path, tiny_data, capsys):
    row = {"model": "transformer_baseline", "preset": "smoke", "seed": 1, "lr": 2e-3, "overrides": TINY}
    path = _write(tmp_path / "twins.json", {"output_dir": str(tmp_path / "out"), "data_dir": str(tiny_data),
                                            "runs": [row, {**row, "name": "the_same_again"}]})
    assert main([path, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("training;") == 1 and "the same run as run transformer_baseline seed 1" in out
    a = BenchmarkResults.load(tmp_path / "out" / "seed_1" / "transformer_baseline_results.json")
    b = BenchmarkResults.load(tmp_path / "out" / "seed_1" / "the_same_again_results.json")
    assert b.model_name == "the_same_again" and b.test_perplexity == a.test_perplexity
    assert main([path, "--status"]) == 0  # a later invocation still says where the copy came from
    assert "same run as `seed_1/transformer_baseline_results.json`" in capsys.readouterr().out


def test_a_failed_run_is_recorded_and_the_others_go_on(tmp_path, tiny_data, monkeypatch, capsys):
    row = {"model": "transformer_baseline", "preset": "smoke", "seed": 1, "lr": 2e-3, "overrides": TINY}
    path = _write(tmp_path / "fails.json", {"output_dir": str(tmp_path / "out"), "data_dir": str(tiny_data),
                                            "runs": [{**row, "name": "breaks"}, {**row, "seed": 2}]})
    real = campaign_module._train_one

    def breaks(folder, config, quiet, separate_process):
        if config.model_name == "breaks":
            raise RuntimeError("breaks: training failed in its worker process: MemoryError")
        real(folder, config, quiet, separate_process)

    monkeypatch.setattr(campaign_module, "_train_one", breaks)
    runner = CampaignRunner(load_campaign(path), quiet=True, separate_process=False)
    plan = runner.run()
    assert (tmp_path / "out" / "seed_2" / "transformer_baseline_results.json").is_file()  # the other ran
    assert [t.row.name for t in plan["pending"]] == ["breaks"]
    assert "FAILED: RuntimeError: breaks: training failed" in (tmp_path / "out" / "campaign.md").read_text()
    assert main([path, "--quiet"]) == 1  # tried again, fails again, says so
    assert "FAILED" in capsys.readouterr().err


def test_a_finished_run_is_kept_whatever_threads_it_ran_with(tmp_path, tiny_data, capsys):
    path = _write(tmp_path / "t.json", {"output_dir": str(tmp_path / "out"), "data_dir": str(tiny_data), "runs": [
        {"model": "resnet_bk_baseline", "preset": "smoke", "seed": 1, "overrides": TINY}]})
    assert main([path, "--quiet", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main([path, "--quiet"]) == 0
    assert "training" not in capsys.readouterr().out


def test_runs_at_once_give_the_same_results(tmp_path, tiny_data):
    straight = CampaignRunner(load_campaign(_campaign(tmp_path, tiny_data, "a.json", "one")), quiet=True,
                              separate_process=False)
    straight.run()
    together = CampaignRunner(load_campaign(_campaign(tmp_path, tiny_data, "b.json", "two")), quiet=True, jobs=2)
    assert not together.run()["pending"]
    assert _figures(tmp_path / "two") == _figures(tmp_path / "one")


SWEEP = LRSweep("epoch", 42, (5e-4, 1e-3, 2e-3), extend=2, edge_margin=0.01)


@pytest.mark.parametrize("scores,values", [
    ({}, (5e-4, 1e-3, 2e-3)),  # nothing finished: the file's values
    ({5e-4: 540.0, 1e-3: 390.0}, (5e-4, 1e-3, 2e-3)),  # waits for the last
    ({5e-4: 540.0, 1e-3: 390.0, 2e-3: 320.0}, (5e-4, 1e-3, 2e-3, 4e-3)),  # the top edge wins by 18%: one further
    ({5e-4: 540.0, 1e-3: 390.0, 2e-3: 320.0, 4e-3: 300.0}, (5e-4, 1e-3, 2e-3, 4e-3, 8e-3)),  # and again
    ({5e-4: 540.0, 1e-3: 390.0, 2e-3: 320.0, 4e-3: 300.0, 8e-3: 290.0}, (5e-4, 1e-3, 2e-3, 4e-3, 8e-3)),  # extend: 2
    ({5e-4: 540.0, 1e-3: 390.0, 2e-3: 320.0, 4e-3: 330.0}, (5e-4, 1e-3, 2e-3, 4e-3)),  # 2e-3 now inside: done
    ({5e-4: 400.0, 1e-3: 398.0, 2e-3: 396.0}, (5e-4, 1e-3, 2e-3)),  # the edge wins by 0.5%: within the margin
    ({5e-4: 300.0, 1e-3: 350.0, 2e-3: 500.0}, (2.5e-4, 5e-4, 1e-3, 2e-3)),  # the bottom edge
    ({5e-4: 350.0, 1e-3: 300.0, 2e-3: 310.0}, (5e-4, 1e-3, 2e-3)),  # inside: nothing to add
    ({5e-4: float("nan"), 1e-3: float("nan"), 2e-3: float("nan")}, (5e-4, 1e-3, 2e-3)),  # diverged: nothing
    ({5e-4: float("nan"), 1e-3: 390.0, 2e-3: float("inf")}, (5e-4, 1e-3, 2e-3)),
    ({5e-4: 300.0, 1e-3: float("nan"), 2e-3: float("nan")}, (2.5e-4, 5e-4, 1e-3, 2e-3)),  # finite beats diverged
])
def test_a_sweep_whose_edge_wins_goes_one_rate_further(scores, values):
    assert sweep_values(SWEEP, scores) == values


def test_no_rate_is_chosen_while_an_extension_is_pending_and_a_spent_edge_is_flagged(tmp_path):
    campaign = load_campaign(_write(tmp_path / "c.json", {
        "output_dir": str(tmp_path / "out"), "lr_sweep": {"values": [5e-4, 1e-3, 2e-3], "extend": 1},
        "runs": [{"model": "lstm", "lr": "swept"}]}))
    chosen, table, diverged, at_edge = choose_rates(campaign, {"lstm": {5e-4: 540.0, 1e-3: 390.0, 2e-3: 320.0}})
    assert chosen == {} and not diverged and not at_edge  # 4e-3 is still to run
    chosen, table, _, at_edge = choose_rates(campaign, {"lstm": {5e-4: 540.0, 1e-3: 390.0, 2e-3: 320.0, 4e-3: 300.0}})
    assert chosen == {"lstm": 4e-3} and at_edge == ["lstm"] and set(table["lstm"]) == {"0.0005", "0.001", "0.002", "0.004"}
    # An added rate that failed counts as diverged: the best rate that finished is chosen.
    chosen, _, _, at_edge = choose_rates(campaign, {"lstm": {5e-4: 540.0, 1e-3: 390.0, 2e-3: 320.0, 4e-3: float("inf")}})
    assert chosen == {"lstm": 2e-3} and not at_edge


def test_an_extension_named_like_a_rate_already_swept_is_not_added():
    """Rates are files named with 6 significant digits: an extension that rounds to an existing
    rate's name would share its file, so the sweep stops there instead."""
    sweep = LRSweep("epoch", 42, (9.99999e-4, 1.0000004e-3), extend=2, edge_margin=0.0)
    assert sweep_values(sweep, {9.99999e-4: 400.0, 1.0000004e-3: 390.0}) == sweep.values


def test_a_campaign_trains_the_rate_past_a_winning_edge_and_may_choose_it(tmp_path, tiny_data):
    path = _write(tmp_path / "edge.json", {
        "output_dir": str(tmp_path / "out"), "data_dir": str(tiny_data),
        "lr_sweep": {"preset": "smoke", "seed": 1, "values": [1e-4, 3e-4], "extend": 1, "edge_margin": 0.0},
        "runs": [{"model": "transformer_baseline", "preset": "smoke", "seed": 1, "lr": "swept", "overrides": TINY}]})
    plan = CampaignRunner(load_campaign(path), quiet=True, separate_process=False).run()
    sweep = {float(lr): ppl for lr, ppl in plan["table"]["transformer_baseline"].items()}
    # On 1,000 tokens the larger rate learns faster, so the edge wins and 9e-4 is tried too.
    assert set(sweep) == {1e-4, 3e-4, 9e-4} and not plan["pending"]
    assert plan["chosen"]["transformer_baseline"] == min(sweep, key=sweep.get)
    assert (tmp_path / "out" / "lr_sweep" / "transformer_baseline_lr0.0009_results.json").is_file()
    assert "0.0009:" in (tmp_path / "out" / "campaign.md").read_text()
    # A failed added rate: the row takes the best rate that finished, and says nothing is pending.
    (tmp_path / "out" / "lr_sweep" / "transformer_baseline_lr0.0009_results.json").unlink()
    runner = CampaignRunner(load_campaign(path), quiet=True, separate_process=False)

    def breaks(folder, config, quiet, separate_process):
        raise RuntimeError("transformer_baseline_lr0.0009: training failed: OverflowError")

    real, campaign_module._train_one = campaign_module._train_one, breaks
    try:
        again = runner.run()
    finally:
        campaign_module._train_one = real
    assert again["chosen"]["transformer_baseline"] == min((1e-4, 3e-4), key=sweep.get)


def test_status_lists_what_is_left_without_training(tmp_path, tiny_data, capsys):
    path = _campaign(tmp_path, tiny_data)
    assert main([path, "--status"]) == 0
    out = capsys.readouterr().out
    assert "0 of 5 runs done" in out and "(sweep pending)" in out
    assert not list((tmp_path / "out").glob("**/*_results.json"))
    assert not (tmp_path / "out" / "campaign.md").exists()  # --status writes nothing


def test_status_says_when_results_files_are_of_another_configuration(tmp_path, tiny_data, capsys):
    """A finished run looked at with another data folder counts as not done, and says why."""
    path = _write(tmp_path / "t.json", {"output_dir": str(tmp_path / "out"), "data_dir": str(tiny_data), "runs": [
        {"model": "resnet_bk_baseline", "preset": "smoke", "seed": 1, "overrides": TINY}]})
    assert main([path, "--quiet"]) == 0
    capsys.readouterr()
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert main([path, "--status", "--data-dir", str(other)]) == 0
    out = capsys.readouterr().out
    assert "0 of 1 runs done" in out and "1 results file(s) here are of another configuration" in out
    assert "differing: data_dir" in out


@pytest.mark.parametrize("change,message", [
    ({"runs": []}, "runs: expected a non-empty list"),
    ({"runs": [{"model": "gpt"}]}, r"runs\[0\].model: expected one of"),
    ({"runs": [{"model": "lstm", "seeds": [1, 1]}]}, r"runs\[0\].seeds: expected distinct seeds"),
    ({"runs": [{"model": "lstm", "lr": "best"}]}, r"runs\[0\].lr: expected a positive learning rate"),
    ({"runs": [{"model": "lstm", "lr": "swept"}]}, "lr_sweep: a run asks for lr: swept"),
    ({"runs": [{"model": "lstm", "preset": "long"}]}, r"runs\[0\].preset: expected one of"),
    ({"runs": [{"model": "lstm", "overrides": {"batchsize": 3}}]}, r"runs\[0\].overrides: .*batchsize"),
    ({"runs": [{"model": "lstm"}, {"model": "lstm", "seed": 3}]}, "two rows are named 'lstm'"),
    ({"runs": [{"model": "lstm", "colour": 1}]}, r"runs\[0\]: unknown key 'colour'"),
    ({"runs": [{"model": "lstm", "overrides": {"seed": 7}}]}, r"runs\[0\].overrides.seed: set by the row itself"),
    ({"runs": [{"model": "lstm", "overrides": {"lr": 1e-2}}]}, r"runs\[0\].overrides.lr: set by the row itself: use lr"),
    ({"runs": [{"model": "lstm", "overrides": {"model": {"architecture": "mamba"}}}]}, "set by the row's model"),
    ({"runs": [{"model": "lstm", "lr": "swept"}], "lr_sweep": {"values": [1e-3, 1.0000001e-3]}},
     "distinct to 6 significant digits"),
    ({"runs": [{"model": "lstm"}], "lr_sweep": {"values": [1e-3]}}, "lr_sweep.values: expected a list of at least two"),
    ({"runs": [{"model": "lstm"}], "lr_sweep": {"values": [1e-3, 2e-3], "extend": -1}}, "lr_sweep.extend: expected"),
    ({"runs": [{"model": "lstm"}], "lr_sweep": {"values": [1e-3, 2e-3], "edge_margin": 1.5}},
     "lr_sweep.edge_margin: expected a fraction"),
])
def test_a_malformed_campaign_is_one_line_naming_its_place(tmp_path, change, message, capsys):
    path = _write(tmp_path / "bad.json", change)
    with pytest.raises(CampaignError, match=message):
        load_campaign(path)
    assert main([path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: ")


def test_an_unreadable_campaign_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: [model: lstm\n")
    assert main([str(bad)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_overrides_act_on_top_of_the_models_own_settings(tmp_path):
    path = _write(tmp_path / "o.json", {"runs": [{"model": "resnet_bk_baseline", "preset": "smoke", "overrides": {
        "methods": {"use_act": {"enabled": True}}, "model": {"bk_channels": 3}}}]})
    config = load_campaign(path).rows[0].config(None, 5)
    assert config.enabled("use_act") and config.model.bk_channels == 3 and config.seed == 5


def test_the_committed_campaigns_load():
    campaign = load_campaign("campaigns/original.yaml")
    names = [row.name for row in campaign.rows]
    assert {"transformer_baseline", "resnet_bk_baseline", "resnet_bk_full", "lstm", "mamba", "resnet_bk_selective",
            "transformer_baseline_lr1e-3", "resnet_bk_baseline_lr1e-3"} == set(names)
    assert all(row.preset == "original" for row in campaign.rows)
    assert campaign.lr_sweep.preset == "epoch" and len(campaign.lr_sweep.values) == 3
