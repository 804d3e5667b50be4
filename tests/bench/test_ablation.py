"""The ablation command end to end on tiny data: every row, the three files, verdicts in words."""

import functools
import json

import pytest

from resnetbk import methods
from resnetbk.bench.ablation import ablation_configs
from resnetbk.bench.cli import main as cli_main
from resnetbk.bench.config import PRESETS, BenchmarkConfig
from resnetbk.bench.runner import WikiText2Benchmark
from resnetbk.hardware import slow_bf16_reason
from resnetbk.methods.base import AblationRow


def test_rows_are_the_baseline_each_implemented_method_alone_and_all_together(monkeypatch):
    monkeypatch.setattr("resnetbk.methods.mixed_precision.slow_bf16_reason", lambda: None)  # a CPU with native bf16
    rows = ablation_configs(BenchmarkConfig.from_dict(PRESETS["smoke"]))
    names = [name for name, _ in rows]
    after = {"use_quantization": "ptq_int8", "use_active_learning": "random_selection"}
    flags = [r for f in methods.FLAGS for r in ([f, after[f]] if f in after else [f])]
    assert names == ["baseline", "no_mixer", *flags, "all"]
    assert rows[1][1].model.no_mixer and not rows[0][1].model.no_mixer
    control = dict(rows)["random_selection"].methods["use_active_learning"]
    assert control.enabled and control.active_learning_selection == "random"
    for name, config in rows:
        on = [f for f in methods.FLAGS if config.enabled(f)]
        expected = {"baseline": [], "no_mixer": [], "random_selection": ["use_active_learning"],
                    "ptq_int8": ["use_quantization"],
                    "all": list(methods.ORIGINAL_FLAGS)}.get(name, [name])
        assert on == expected, name
        assert config.seed == rows[0][1].seed and config.max_train_tokens == rows[0][1].max_train_tokens


def test_rows_picks_some_rows_and_names_an_unknown_one():
    rows = ablation_configs(BenchmarkConfig.from_dict(PRESETS["smoke"]), ["use_spectral_z"])
    assert [name for name, _ in rows] == ["baseline", "use_spectral_z"]
    assert [name for name, _ in ablation_configs(BenchmarkConfig.from_dict(PRESETS["smoke"]), ["no_mixer"])] == [
        "baseline", "no_mixer"]
    with pytest.raises(ValueError, match="--rows: expected method flags.*got use_nothing"):
        ablation_configs(BenchmarkConfig.from_dict(PRESETS["smoke"]), ["use_nothing"])


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("ablation")
    # Every row in this process: a worker per row (the command's default on a CPU, for an honest
    # peak memory) would cost a fresh import of torch per row, most of this test's time, and nothing
    # here reads the memory's value.
    in_process = functools.partial(WikiText2Benchmark, separate_process=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("resnetbk.bench.ablation.WikiText2Benchmark", in_process)
        code = cli_main(["ablation", "--preset", "smoke", "--data-dir", str(tiny_data), "--output-dir", str(out),
                         "--device", "cpu", "--threads", "1", "--epochs", "1", "--quiet"])
    assert code == 0
    return out


def test_ablation_writes_json_markdown_and_figure(ablation_run):
    doc = json.loads((ablation_run / "ablation.json").read_text())
    rows = {r["row"]: r for r in doc["rows"]}
    # Mixed precision is left out, with its reason, exactly where this CPU has no native bf16.
    slow = slow_bf16_reason() is not None
    assert list(doc["left_out_rows"]) == (["use_mixed_precision"] if slow else [])
    ran = [f for f in methods.FLAGS if f not in doc["left_out_rows"]]
    after = {"use_active_learning": "random_selection", "use_pruning": "small_dense", "use_quantization": "ptq_int8"}
    ran_and_controls = [r for f in ran for r in ([f, after[f]] if f in after else [f])]
    assert list(rows) == ["baseline", "no_mixer", *ran_and_controls, "all"]
    assert rows["random_selection"]["verdict"].startswith("control")
    assert rows["ptq_int8"]["verdict"].startswith("control") and "INT8 inference ppl" in rows["ptq_int8"]["own_figure"]
    assert rows["small_dense"]["verdict"].startswith("control") and "a dense model of d_model" in rows["small_dense"]["own_figure"]
    assert rows["baseline"]["tokens_per_second_ratio"] == 1.0 and rows["baseline"]["verdict"] == "reference"
    assert rows["no_mixer"]["verdict"].startswith("control") and rows["no_mixer"]["causal"] is True
    assert rows["no_mixer"]["forward_flops_ratio"] < 1.0  # no BK-Core, no potential or read-out
    for flag in ran:
        row = rows[flag]
        assert row["claim"] == methods.BY_FLAG[flag].claim
        assert row["verdict"] and row["verdict"] != "not assessed", flag
        assert row["causal"] is True
        for key in ("valid_perplexity", "test_perplexity", "tokens_per_second_ratio", "forward_flops_ratio",
                    "backward_flops_ratio", "peak_memory_ratio", "model_size_ratio"):
            assert isinstance(row[key], float), (flag, key)
    # The compute-saving methods change the measured FLOPs: ACT starts every token at full depth
    # (its halting units cost a little more), multi-scale halves the middle blocks' sequence.
    assert rows["use_act"]["forward_flops_ratio"] > 1.0
    assert rows["use_multi_scale"]["forward_flops_ratio"] < 1.0
    assert doc["bk_op"]["backward_speedup_exact_vs_autograd"] > 0
    markdown = (ablation_run / "ablation.md").read_text()
    assert all(methods.BY_FLAG[f].claim in markdown for f in ran)
    assert (ablation_run / "ablation.png").stat().st_size > 10_000


def test_a_claim_the_measurement_does_not_bear_out_says_so():
    base = AblationRow(row="use_mixed_precision", tokens_per_second_ratio=0.6, peak_memory_ratio=1.1,
                       test_perplexity_change_percent=0.0)
    own, verdict = methods.BY_FLAG["use_mixed_precision"].assess(base)
    assert verdict.startswith("not borne out: speed (tokens/s) 0.60x (claimed 2x, needs 1.80x); peak memory")

