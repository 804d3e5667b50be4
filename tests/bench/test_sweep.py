"""``bench sweep`` end to end on tiny data: the baseline and one run per value, the choice made on
validation only, a rerun with --resume keeping every finished run, bad options as one line."""

import json
from pathlib import Path

import pytest

from resnetbk.bench import sweep
from resnetbk.bench.cli import main as cli_main
from resnetbk.bench.config import PRESETS, BenchmarkConfig
from resnetbk.bench.runner import what_runs
from resnetbk.methods import ACT


def run(tiny_data, out, *extra):
    return cli_main(["sweep", "--method", "use_act", "--values", "ponder_weight=0.001,0.3", "--preset", "smoke",
                     "--data-dir", str(tiny_data), "--output-dir", str(out), "--device", "cpu", "--threads", "1",
                     "--quiet", *extra])


def test_a_sweep_writes_its_rows_chooses_on_validation_and_resumes_without_rerunning(tmp_path, tiny_data, capsys):
    out = tmp_path / "sweep"
    assert run(tiny_data, out) == 0
    doc = json.loads((out / "sweep.json").read_text())
    assert [r["value"] for r in doc["rows"]] == [0.001, 0.3] and doc["setting"] == "ponder_weight"
    for r in doc["rows"]:
        settings = json.loads((out / f"{r['row'].replace('ponder_weight=', 'sweep_use_act_ponder_weight_')}"
                               "_results.json").read_text())["config"]["methods"]["use_act"]
        assert settings["enabled"] and settings["ponder_weight"] == r["value"]
        assert r["verdict_on_validation"].split(":")[0] in ("held", "not borne out", "not measured")
    held = [r for r in doc["rows"] if r["verdict_on_validation"].startswith("held")]
    pool = held or [r for r in doc["rows"] if r["saving_delivered"]] or doc["rows"]
    assert doc["chosen"]["value"] == min(pool, key=lambda r: r["valid_perplexity"])["value"]
    assert "Chosen: **ponder_weight =" in (out / "sweep.md").read_text()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*_results.json")}
    capsys.readouterr()
    assert run(tiny_data, out, "--resume") == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_results.json")} == stamps  # nothing rerun
    assert capsys.readouterr().out.count("finished earlier, kept") == 3


def test_the_choice_prefers_a_holding_value_then_the_lowest_validation_perplexity():
    rows = [{"row": "a", "value": 1, "valid_perplexity": 10.0, "verdict_on_validation": "not borne out: x"},
            {"row": "b", "value": 2, "valid_perplexity": 12.0, "verdict_on_validation": "held: y"},
            {"row": "c", "value": 3, "valid_perplexity": 11.0, "verdict_on_validation": "held: z"}]
    assert sweep.choose(rows)["value"] == 3
    assert sweep.choose(rows[:1])["value"] == 1 and "no value holds" in sweep.choose(rows[:1])["rule"]
    saving = [{**rows[0], "saving_delivered": False}, {"row": "d", "value": 4, "valid_perplexity": 15.0,
                                                       "verdict_on_validation": "not borne out: y", "saving_delivered": True}]
    assert sweep.choose(saving)["value"] == 4 and "deliver the claimed saving" in sweep.choose(saving)["rule"]


@pytest.mark.parametrize("values,message", [
    ("ponder", "--values: expected NAME=V1,V2"), ("enabled=True", "--values: expected NAME=V1,V2"),
    ("ponder_weight=a", "ponder_weight takes float values, got 'a'"), ("ponder_weight=", "no value given"),
])
def test_bad_values_are_named(values, message):
    with pytest.raises(ValueError, match=message):
        sweep.parse_values(ACT, values)


def test_an_unknown_method_is_one_line(tiny_data, tmp_path, capsys):
    code = cli_main(["sweep", "--method", "use_nothing", "--values", "x=1", "--data-dir", str(tiny_data),
                     "--output-dir", str(tmp_path)])
    assert code == 2 and capsys.readouterr().err.startswith("error: --method: expected one of use_analytic_gradient")


def test_resume_compares_what_runs_not_the_settings_of_methods_that_are_off():
    config = BenchmarkConfig.from_dict(PRESETS["smoke"]).with_methods(use_act=True)
    now = config.to_dict()
    older = json.loads(json.dumps(now))
    older["methods"]["use_pruning"]["pruning_target_sparsity"] = 0.75  # off: its settings do not act
    del older["model"]["no_mixer"]  # a field added since, at its default
    now["data_dir"] = "data/wikitext-2"
    older["data_dir"] = str(Path("data/wikitext-2").resolve())  # the same folder, named absolutely
    assert what_runs(older) == what_runs(now)
    assert what_runs({**older, "data_dir": "/elsewhere/wikitext-2"}) != what_runs(now)
    older["methods"]["use_act"]["act_bias_init"] = 1.0  # on: a different run
    assert what_runs(older) != what_runs(now)


def test_resume_reruns_a_finished_run_of_an_older_form_of_a_method(tmp_path, tiny_data, capsys):
    out = tmp_path / "sweep"
    assert run(tiny_data, out) == 0
    path = out / "sweep_use_act_ponder_weight_0.3_results.json"
    doc = json.loads(path.read_text())
    assert doc["methods"]["use_act"]["version"] == ACT.version
    doc["methods"]["use_act"].pop("version")  # as a file from before versions (form 1)
    path.write_text(json.dumps(doc))
    capsys.readouterr()
    assert run(tiny_data, out, "--resume") == 0
    captured = capsys.readouterr()
    assert "ran an older form of use_act; running it again" in captured.err
    assert captured.out.count("finished earlier, kept") == 2
