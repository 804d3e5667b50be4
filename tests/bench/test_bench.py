"""The benchmark: configs, an end-to-end smoke run with the documented files, resume, causality
guard, non-finite steps, and comparisons."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import make_config
from resnetbk import data as wt2
from resnetbk import methods
from resnetbk.bench import BenchmarkConfig, BenchmarkResults, compare_results, model_config
from resnetbk.bench.cli import main as cli_main
from resnetbk.bench.config import PRESETS
from resnetbk.bench.recipe import train_model as train
from resnetbk.bench.report import requirement_change, requirement_line
from resnetbk.measure import environment as env
from resnetbk.measure.step_log import read_steps

RESULT_FIELDS = {
    "model_name", "config", "training_time", "forward_flops",
    "backward_flops", "optimizer_flops", "total_flops_per_step", "total_training_flops", "peak_memory_mb",
    "model_size_mb", "epoch_losses", "epoch_perplexities", "epoch_times", "valid_perplexity", "test_perplexity",
    "best_valid_perplexity", "best_epoch", "train_loss", "train_perplexity", "tokens_per_second", "steps",
    "skipped_steps", "stopped_early", "vocab_size", "parameters", "non_embedding_parameters", "causal",
    "causality_probe", "peak_memory_method", "dataset", "device", "versions", "git_revision",
    "flops_breakdown", "epoch_aux_losses", "methods", "schema_version", "peak_memory_above_baseline_mb",
    "throughput_method", "noncausal_perplexities", "valid_curve", "model_size_method", "context_reach",
    "decay_law",
}


def smoke_config(tiny_data, **changes) -> BenchmarkConfig:
    fields = dict(PRESETS["smoke"], data_dir=str(tiny_data), device="cpu", threads=1)
    fields.update(changes)
    return make_config(**fields)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown config key\\(s\\): bogus"):
        BenchmarkConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="d_model: expected a positive integer, got 0"):
        make_config(d_model=0)
    with pytest.raises(ValueError, match="lr: expected a positive number"):
        make_config(lr=-1.0)
    with pytest.raises(ValueError, match="bk_mode: expected one of \\('causal', 'bidirectional'\\)"):
        make_config(bk_mode="future")
    with pytest.raises(ValueError, match="n_heads: d_model = 10 must be divisible by n_heads = 4"):
        make_config(architecture="transformer", d_model=10)


def test_model_configs_follow_the_seed(monkeypatch):
    monkeypatch.setattr("resnetbk.methods.mixed_precision.slow_bf16_reason", lambda: None)  # a CPU with native bf16
    base = BenchmarkConfig()
    assert model_config("transformer_baseline", base).model.architecture == "transformer"
    baseline, full = model_config("resnet_bk_baseline", base), model_config("resnet_bk_full", base)
    assert not baseline.enabled("use_analytic_gradient") and not baseline.enabled("use_mixed_precision")
    assert full.enabled("use_analytic_gradient") and full.enabled("use_mixed_precision")
    with pytest.raises(ValueError, match="--models"):
        model_config("gpt5", base)


def test_config_file_and_cli_errors(tmp_path, capsys, tiny_data):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {d_model: 16}\nlearning_rate: 0.1\n")
    assert cli_main(["--config", str(bad), "--data-dir", str(tiny_data)]) == 2
    assert "unknown config key(s): learning_rate" in capsys.readouterr().err
    for text, message in (("methods: {use_act: {enabled: true, threshold: 0.5}}", "unknown methods.use_act key(s): threshold"),
                          ("methods: {use_nothing: {enabled: true}}", "methods: unknown method 'use_nothing'"),
                          ("model: {d_modle: 16}", "unknown model key(s): d_modle")):
        bad.write_text(text + "\n")
        assert cli_main(["--config", str(bad), "--data-dir", str(tiny_data)]) == 2
        assert message in capsys.readouterr().err, text
    assert cli_main(["--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "missing: wiki.train.tokens" in capsys.readouterr().err


def test_an_old_flat_config_key_is_an_error_naming_its_new_place(tmp_path, capsys, tiny_data):
    old = tmp_path / "old.yaml"
    old.write_text("d_model: 16\nuse_act: true\nact_threshold: 0.9\nepochs: 1\n")
    assert cli_main(["--config", str(old), "--data-dir", str(tiny_data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    for moved in ("d_model: now model.d_model", "use_act: now methods.use_act.enabled",
                  "act_threshold: now methods.use_act.act_threshold"):
        assert moved in err, err


def test_a_nested_config_file_is_merged_over_the_preset(tmp_path):
    from resnetbk.bench.options import build_base_config, parse_args

    path = tmp_path / "c.yaml"
    path.write_text("model: {d_model: 24}\nepochs: 3\nmethods: {use_act: {enabled: true, act_threshold: 0.9}}\n")
    config = build_base_config(parse_args(["--preset", "smoke", "--config", str(path)]))
    assert (config.model.d_model, config.model.n_layers, config.model.n_seq) == (24, 3, 16)  # the rest: smoke's
    assert config.epochs == 3 and config.batch_size == 4
    assert config.enabled("use_act") and config.methods["use_act"].act_threshold == 0.9
    assert BenchmarkConfig.from_dict(config.to_dict()) == config  # what the results record reads back


@pytest.mark.parametrize("name, text, where", [
    ("broken.yaml", "d_model: 16\nepochs: [1, 2\n", "line 3, column 1: not valid YAML"),
    ("broken.json", '{"d_model": 16,\n "epochs": }', "line 2, column 12: not valid JSON"),
])
def test_a_malformed_config_file_is_one_line_naming_file_line_and_column(tmp_path, capsys, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    assert cli_main(["--config", str(path), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and where in err, err


def test_json_results_get_the_umask_mode_not_the_temporary_files(tmp_path):
    import os

    from resnetbk.jsonfile import write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_smoke_run_writes_every_file_with_the_documented_schema(tmp_path, tiny_data):
    out = tmp_path / "out"
    code = cli_main(["--preset", "smoke", "--data-dir", str(tiny_data), "--output-dir", str(out), "--quiet",
                     "--device", "cpu", "--threads", "1"])
    assert code == 0
    names = ("transformer_baseline", "resnet_bk_baseline", "resnet_bk_full")
    for name in names:
        doc = json.loads((out / f"{name}_results.json").read_text())
        assert set(doc) == RESULT_FIELDS
        assert doc["model_name"] == name
        assert doc["causal"] is True and doc["schema_version"] == 7
        assert (doc["decay_law"] is None) == name.startswith("transformer")  # the BK-Core's law, ResNet-BK only
        assert doc["config"]["model"]["architecture"] == ("transformer" if name.startswith("transformer") else "resnet_bk")
        assert len(doc["epoch_losses"]) == len(doc["epoch_perplexities"]) == len(doc["epoch_times"]) == 2
        assert doc["test_perplexity"] > 1
        assert doc["best_valid_perplexity"] == min(doc["epoch_perplexities"])
        assert doc["steps"] > 0 and doc["skipped_steps"] == 0 and doc["tokens_per_second"] > 0
        assert doc["peak_memory_mb"] > 0 and "RSS" in doc["peak_memory_method"]
        assert "custom dataset" in doc["dataset"]
        # FLOPs measured from the executed steps: consistent totals, no unpriced ops.
        per_step = doc["forward_flops"] + doc["backward_flops"] + doc["optimizer_flops"]
        assert abs(doc["total_flops_per_step"] - per_step) <= 2
        # The per-step figure is a rounded average: the product may differ by at most the step count.
        assert abs(doc["total_training_flops"] - doc["total_flops_per_step"] * doc["steps"]) <= doc["steps"]
        # Every 10th step traced (steps 0, 10, ...); the throughput times the others only.
        assert doc["flops_breakdown"]["traced_steps"] == math.ceil(doc["steps"] / 10)
        assert "did not price" in doc["throughput_method"]
        assert doc["peak_memory_above_baseline_mb"] > 0 and doc["noncausal_perplexities"] is None
        rows = read_steps(out / f"{name}_steps.csv")
        assert [r["step"] for r in rows] == list(range(1, doc["steps"] + 1))
        assert sum(r["flops_traced"] for r in rows) == doc["flops_breakdown"]["traced_steps"]
        assert all(r["grad_norm"] > 0 and r["lr"] > 0 and math.isfinite(r["loss"]) for r in rows)
        assert ("aux_load_balance" in rows[0]) == name.startswith("resnet_bk")
        assert doc["forward_flops"] > 0
        if name != "resnet_bk_full":  # (its fake-quant forward ops on every weight read outweigh a tiny backward)
            assert doc["backward_flops"] > doc["forward_flops"]
        assert 0 < doc["optimizer_flops"] <= 14 * doc["parameters"]
        assert doc["flops_breakdown"]["unknown_ops"] == {}
        components = doc["flops_breakdown"]["per_step_by_component"]
        assert "lm_head" in components and "optimizer" in components
        assert ("blocks.0.bk" in components) == name.startswith("resnet_bk")
        assert doc["versions"]["torch"] and len(doc["git_revision"] or "0" * 40) == 40
        assert ("load_balance" in doc["epoch_aux_losses"]) == name.startswith("resnet_bk")
        if name == "resnet_bk_full":  # every implemented method ran and recorded its own figures
            for flag in ("use_act", "use_sparse_bk", "use_early_exit", "use_multi_scale", "use_koopman",
                         "use_physics_informed", "use_quantization", "use_pruning", "use_curriculum",
                         "use_active_learning"):
                assert flag in doc["methods"], flag
            assert {"ponder", "sparsity", "exit", "exit_confidence", "energy"} <= set(doc["epoch_aux_losses"])
            assert "size on disk" in doc["model_size_method"]
        reach = doc["context_reach"]
        assert len(reach["relative"]) == len(reach["gradient_norm"]) == 16 and reach["relative"][0] == 1.0
    for a, b in (("transformer_baseline", "resnet_bk_baseline"), ("transformer_baseline", "resnet_bk_full"),
                 ("resnet_bk_baseline", "resnet_bk_full")):
        comparison = json.loads((out / f"comparison_{a}_vs_{b}.json").read_text())
        assert comparison["reference"] == a and comparison["speedup_time"] > 0
    assert (out / "training_curves.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "| transformer_baseline | yes |" in report and "one seed: unknown" in report
    assert "## Context reach" in report and "| resnet_bk_baseline | " in report.split("## Context reach")[1]
    assert json.loads((out / "run_info.json").read_text())["command"].startswith("python -m resnetbk.bench --preset smoke")


def test_seeds_give_mean_and_std_and_the_report_command_rewrites_the_report(tmp_path, tiny_data, capsys):
    out = tmp_path / "out"
    common = ["--preset", "smoke", "--data-dir", str(tiny_data), "--quiet", "--device", "cpu", "--threads", "1",
              "--models", "transformer_baseline,resnet_bk_baseline", "--epochs", "1"]
    assert cli_main([*common, "--output-dir", str(out), "--seeds", "3,4"]) == 0
    for seed in (3, 4):
        doc = json.loads((out / f"seed_{seed}" / "resnet_bk_baseline_results.json").read_text())
        assert doc["config"]["seed"] == seed
    summary = json.loads((out / "summary.json").read_text())
    ppl = summary["models"]["resnet_bk_baseline"]["test_perplexity"]
    assert ppl["n"] == 2 and ppl["std"] > 0 and ppl["mean"] == pytest.approx(sum(ppl["values"]) / 2)
    comparison = json.loads((out / "comparison_transformer_baseline_vs_resnet_bk_baseline.json").read_text())
    assert comparison["seeds"] == 2 and isinstance(comparison["perplexity_difference_exceeds_2_std"], bool)
    assert comparison["perplexity_model"] == pytest.approx(ppl["mean"])
    (out / "report.md").unlink()
    capsys.readouterr()
    assert cli_main(["report", str(out)]) == 0
    assert "±" in (out / "report.md").read_text() and "resnet_bk_baseline" in capsys.readouterr().out
    assert cli_main(["report", str(tmp_path / "empty")]) == 2
    assert "no *_results.json" in capsys.readouterr().err
    assert cli_main([*common, "--output-dir", str(out), "--seeds", "3,x"]) == 2
    assert "--seeds: expected comma-separated integers" in capsys.readouterr().err


@pytest.mark.parametrize("with_methods", (False, True), ids=("baseline", "every_method"))
def test_resume_gives_the_same_numbers_as_an_uninterrupted_run(tmp_path, tiny_data, with_methods, monkeypatch):
    # Every method on, mixed precision included: as on a CPU with native bf16 (whatever this one has).
    monkeypatch.setattr("resnetbk.methods.mixed_precision.slow_bf16_reason", lambda: None)
    corpus = wt2.load_corpus(str(tiny_data))
    flags = {flag: with_methods for flag in methods.FLAGS}
    config = smoke_config(tiny_data, architecture="resnet_bk", epochs=3, model_name="resume_check", valid_curve_interval=3,
                          **flags)
    whole = train(config, corpus, tmp_path / "whole", quiet=True, log=lambda *_: None, steps_csv=tmp_path / "whole.csv")

    class Interrupted(Exception):
        pass

    def crash_after_first_epoch(message):
        if "epoch 1:" in message:  # logged right after the epoch's checkpoint is on disk
            raise Interrupted

    with pytest.raises(Interrupted):
        train(config, corpus, tmp_path / "cut", quiet=True, log=crash_after_first_epoch, steps_csv=tmp_path / "cut.csv")
    resumed = train(config, corpus, tmp_path / "cut", resume=True, quiet=True, log=lambda *_: None,
                    steps_csv=tmp_path / "cut.csv")
    # The step log continues where the checkpoint left off: the same rows as the uninterrupted run.
    same = ("step", "epoch", "lr", "loss", "total_loss", "grad_norm")
    assert [{k: r[k] for k in same} for r in read_steps(tmp_path / "cut.csv")] == [
        {k: r[k] for k in same} for r in read_steps(tmp_path / "whole.csv")]
    assert resumed.epoch_losses == whole.epoch_losses
    assert resumed.epoch_perplexities == whole.epoch_perplexities
    assert resumed.test_perplexity == whole.test_perplexity and resumed.steps == whole.steps
    assert resumed.epoch_aux_losses == whole.epoch_aux_losses
    assert _without_timings(resumed.methods) == _without_timings(whole.methods)
    assert [{**p, "train_time": 0} for p in resumed.valid_curve] == [{**p, "train_time": 0} for p in whole.valid_curve]


def _without_timings(value):
    """The methods' figures without wall-clock measurements and file paths (which differ between two runs)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "seconds" not in k and k not in ("tokens_per_second", "path")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_resume_refuses_another_configuration(tmp_path, tiny_data):
    corpus = wt2.load_corpus(str(tiny_data))
    config = smoke_config(tiny_data, epochs=1)
    train(config, corpus, tmp_path, quiet=True, log=lambda *_: None)
    with pytest.raises(ValueError, match="--resume: .* different configuration"):
        train(config.replace(lr=5e-3), corpus, tmp_path, resume=True, quiet=True, log=lambda *_: None)


def test_bidirectional_needs_allow_noncausal_and_is_labelled(tmp_path, tiny_data):
    corpus = wt2.load_corpus(str(tiny_data))
    config = smoke_config(tiny_data, architecture="resnet_bk", bk_mode="bidirectional", epochs=1)
    with pytest.raises(ValueError, match="--allow-noncausal"):
        train(config, corpus, tmp_path, quiet=True, log=lambda *_: None)
    messages = []
    result = train(config.replace(allow_noncausal=True), corpus, tmp_path, quiet=True, log=messages.append)
    assert result.causal is False
    assert any("not language-model perplexities" in m for m in messages)
    # Its perplexities are never written as language-model perplexities.
    assert math.isnan(result.test_perplexity) and math.isnan(result.best_valid_perplexity) and not result.epoch_perplexities
    assert result.noncausal_perplexities["test_perplexity"] > 1


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tmp_path, tiny_data, monkeypatch):
    from resnetbk.models.head import LMHead

    real_forward = LMHead.forward

    def nan_in_training(self, hidden, targets=None, **kwargs):
        out = real_forward(self, hidden, targets, **kwargs)
        return out * math.nan if torch.is_grad_enabled() and targets is not None else out

    monkeypatch.setattr(LMHead, "forward", nan_in_training)
    corpus = wt2.load_corpus(str(tiny_data))
    config = smoke_config(tiny_data, epochs=1, max_consecutive_skips=3)
    result = train(config, corpus, tmp_path, quiet=True, log=lambda *_: None)
    assert result.skipped_steps == 3 and result.steps == 3
    assert "3 consecutive steps" in result.stopped_early
    assert math.isnan(result.train_loss)  # nothing was averaged in
    assert math.isfinite(result.test_perplexity)  # evaluation still ran on the (untrained) weights


def test_compare_results_arithmetic():
    def result(name, time, ppl, mem, size, flops=None):
        return BenchmarkResults(model_name=name, config={}, training_time=time, peak_memory_mb=mem, model_size_mb=size,
                                test_perplexity=ppl, best_valid_perplexity=ppl, total_training_flops=flops)

    c = compare_results(result("a", 10.0, 100.0, 200.0, 4.0, 1000), result("b", 5.0, 110.0, 150.0, 3.0, 250))
    assert c["speedup_time"] == 2.0 and c["speedup_flops"] == 4.0
    assert c["perplexity_difference_percent"] == pytest.approx(10.0)
    assert c["memory_reduction_percent"] == pytest.approx(25.0) and c["size_reduction_percent"] == pytest.approx(25.0)
    assert compare_results(result("a", 1.0, 1.0, 1.0, 1.0), result("b", 1.0, 1.0, 1.0, 1.0))["speedup_flops"] is None


def test_results_round_trip(tmp_path):
    r = BenchmarkResults(model_name="m", config={"a": 1}, train_loss=math.nan, test_perplexity=2.0,
                         best_valid_perplexity=2.0, training_time=1.0)
    r.save(tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["train_loss"] is None  # NaN is written as null, never as an invalid JSON token
    assert BenchmarkResults.load(tmp_path / "r.json").test_perplexity == 2.0


def test_the_committed_older_results_still_read_and_report(tmp_path):
    """Every committed results file (schemas 1 to 5: a flat config, the original benchmark's duplicate
    names; 6: the nested config) loads, its config reads through flat_view, and report rewrites a
    committed folder."""
    import shutil
    from pathlib import Path

    from resnetbk.bench.config import flat_view
    from resnetbk.bench.report import write_report

    results = Path(__file__).resolve().parents[2] / "results"
    files = sorted(results.glob("**/*_results.json"))
    assert files, "no committed results found"
    for path in files:
        r = BenchmarkResults.load(path)
        assert r.schema_version <= 7 and "final_perplexity" not in r.to_dict()
        assert flat_view(r.config)["model_name"] == r.model_name
    folder = tmp_path / "quick"
    shutil.copytree(results / "wikitext2-quick", folder)
    write_report(folder)
    report = (folder / "report.md").read_text()
    assert "transformer_baseline" in report and "resnet_bk_baseline" in report and "| d_model | 64 |" in report


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path, tiny_data):
    """torchrun with 2 CPU processes (gloo) gives the single-process losses of the same global batch."""
    import os
    import subprocess
    import sys

    config = tmp_path / "config.json"
    # No dropout (its random masks differ per process) and no load-balancing loss (it is per process).
    # An untied LM head: DDP must see the fused head's weight gradient as part of the forward.
    config.write_text(json.dumps({"model": {"dropout": 0.0, "tie_embeddings": False}, "load_balance_weight": 0.0,
                                  "threads": 1, "device": "cpu"}))
    common = ["--preset", "smoke", "--models", "transformer_baseline,resnet_bk_baseline", "--config", str(config),
              "--data-dir", str(tiny_data), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "resnetbk.bench", *common, "--output-dir", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "resnetbk.bench", *common, "--output-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    for name in ("transformer_baseline", "resnet_bk_baseline"):
        one = json.loads((tmp_path / "one" / f"{name}_results.json").read_text())
        two = json.loads((tmp_path / "two" / f"{name}_results.json").read_text())
        assert one["steps"] == two["steps"] > 0
        assert two["epoch_losses"] == pytest.approx(one["epoch_losses"], rel=1e-5)
        assert two["epoch_perplexities"] == pytest.approx(one["epoch_perplexities"], rel=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a missing GPU")
def test_cli_reports_a_missing_gpu_without_a_traceback(tmp_path, capsys, tiny_data):
    # Checked before any data is read (this data folder does not exist) and before any output.
    out = tmp_path / "out"
    code = cli_main(["--preset", "smoke", "--models", "transformer_baseline", "--data-dir", str(tmp_path / "none"),
                     "--output-dir", str(out), "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "error: device: 'cuda' was asked for but torch sees no CUDA device" in err and "Traceback" not in err
    assert "--resume" not in err


def test_cli_reports_a_failure_inside_the_worker_process(tmp_path, capsys, tiny_data):
    """The model trains in a spawned worker; its exception reaches the parent as one error line."""
    config = tmp_path / "bidirectional.json"
    config.write_text(json.dumps({"model": {"bk_mode": "bidirectional"}}))  # refused in the worker without --allow-noncausal
    code = cli_main(["--preset", "smoke", "--models", "resnet_bk_baseline", "--data-dir", str(tiny_data),
                     "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--config", str(config), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "resnet_bk_baseline: training failed in its worker process: ValueError" in err
    assert "reads future tokens" in err and "--resume" not in err  # nothing was checkpointed
    assert (tmp_path / "out" / "runs" / "resnet_bk_baseline" / "error.txt").is_file()


def _children(pid: int) -> list:
    from pathlib import Path

    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not __import__("pathlib").Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("whole_group", [False, True], ids=["parent-only", "ctrl-c"])
def test_an_interrupt_stops_parent_and_worker_and_keeps_the_checkpoint(tmp_path, tiny_data, whole_group):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    checkpoint = out / "runs" / "resnet_bk_baseline" / "checkpoint.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # A shell's background job (`cmd &`) starts with SIGINT ignored, and Python then never turns
    # it into KeyboardInterrupt: give the run the default disposition a terminal's job has.
    proc = subprocess.Popen([sys.executable, "-m", "resnetbk.bench", "--preset", "smoke", "--models",
                             "resnet_bk_baseline", "--epochs", "500", "--data-dir", str(tiny_data), "--output-dir",
                             str(out), "--device", "cpu", "--threads", "1", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert checkpoint.is_file(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in 300 s"
        workers = _children(proc.pid)
        assert workers, "the model trains in a worker process"
        if whole_group:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at a terminal does
        else:
            os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()  # reap it and close its pipes
    assert proc.returncode == 130, err
    assert "interrupted: resnet_bk_baseline: interrupted after epoch" in err and "--resume" in err, err
    assert "Traceback" not in err and "leaked semaphore" not in err, err
    # (The children include multiprocessing's resource tracker, which exits just after the parent.)
    deadline = time.monotonic() + 15
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), "the worker kept running"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)  # intact, loadable
    assert state["progress"]["epoch"] >= 1


def test_plain_progress_lines_when_not_a_terminal(capsys):
    from resnetbk.train.progress import PlainProgress

    bar = PlainProgress(total=4, desc="model epoch 1/1", interval=0.0)
    bar.set_postfix(loss="7.000", tok_s="5,000")
    bar.update(1)
    err = capsys.readouterr().err
    assert "model epoch 1/1: step 1/4, loss 7.000, tok_s 5,000, ETA" in err


def test_evaluation_shows_progress_in_a_log(tmp_path, tiny_data, capsys, monkeypatch):
    """Evaluating a full split takes minutes on a CPU: it reports progress like training does."""
    import resnetbk.train.progress as train_module

    original = train_module.PlainProgress.__init__

    def every_update(self, total, desc, interval=60.0, unit="step"):
        original(self, total, desc, 0.0, unit)

    monkeypatch.setattr(train_module.PlainProgress, "__init__", every_update)
    train(smoke_config(tiny_data, epochs=1, model_name="resnet_bk_baseline"), wt2.load_corpus(str(tiny_data)),
          tmp_path / "run", quiet=False, log=lambda *_: None)
    err = capsys.readouterr().err
    assert "resnet_bk_baseline validation: window 1/" in err and "resnet_bk_baseline test: window 1/" in err


def test_the_benchmark_trains_and_compares_the_peers(tmp_path, tiny_data):
    out = tmp_path / "out"
    code = cli_main(["--preset", "smoke", "--data-dir", str(tiny_data), "--output-dir", str(out), "--quiet",
                     "--device", "cpu", "--threads", "1", "--epochs", "1", "--models", "resnet_bk_baseline,lstm,mamba"])
    assert code == 0
    counts = {}
    for name in ("lstm", "mamba"):
        doc = json.loads((out / f"{name}_results.json").read_text())
        assert doc["causal"] is True and math.isfinite(doc["test_perplexity"]) and doc["steps"] > 0
        assert doc["flops_breakdown"]["unknown_ops"] == {} and doc["backward_flops"] > doc["forward_flops"] > 0
        assert doc["config"]["model"]["architecture"] == name
        counts[name] = doc["non_embedding_parameters"]
        assert (out / f"comparison_resnet_bk_baseline_vs_{name}.json").exists()
    reference = json.loads((out / "resnet_bk_baseline_results.json").read_text())["non_embedding_parameters"]
    assert all(abs(c / reference - 1) < 0.10 for c in counts.values()), (counts, reference)
    assert "| lstm |" in (out / "report.md").read_text()


def test_the_models_derived_fields_are_not_settings():
    """vocab_size, bk_grad and mamba_cuda come from the data, the analytic-gradient method and the
    device: a config that set them would record what did not run."""
    with pytest.raises(ValueError, match="model.bk_grad: set by use_analytic_gradient"):
        BenchmarkConfig.from_dict({"model": {"bk_grad": "autograd"}})
    with pytest.raises(ValueError, match="model.vocab_size: set by the data's vocabulary"):
        BenchmarkConfig.from_dict({"model": {"vocab_size": 10}})
    assert not {"vocab_size", "bk_grad", "mamba_cuda"} & set(BenchmarkConfig().to_dict()["model"])


def test_training_time_counts_a_methods_epoch_start_work_but_not_its_batch_start_work(tmp_path, tiny_data, monkeypatch):
    """As the loop measured before its measurements became listeners: active learning's scoring
    pass (EPOCH_START) is training time; work a method does before each step (BATCH_START) is not.
    The timer reads a fake clock that only the methods' work advances, so the test does not depend
    on how fast or loaded the machine is (a real sleep beside a real step once failed CI)."""
    import types

    from resnetbk.bench.recipe import make_model
    from resnetbk.train import listeners
    from resnetbk.train.events import Listener
    from resnetbk.train.loop import train as loop_train

    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(listeners, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))

    class Slow(Listener):
        def __init__(self, epoch_s: float, batch_s: float):
            self.epoch_s, self.batch_s = epoch_s, batch_s

        def on_epoch_start(self, state):
            clock.now += self.epoch_s

        def on_batch_start(self, state):
            clock.now += self.batch_s

    config = smoke_config(tiny_data, epochs=1, max_steps=3, model_name="timing", evaluate_test=False)
    corpus = wt2.load_corpus(str(tiny_data))
    runs = {}
    for name, slow in (("plain", Slow(0.0, 0.0)), ("epoch", Slow(0.5, 0.0)), ("batch", Slow(0.0, 0.5))):
        runs[name] = loop_train(config, corpus, tmp_path / name, build_model=lambda: make_model(config, corpus.vocab_size),
                                methods=[slow], quiet=True, log=lambda *_: None)
    assert runs["plain"].training_time == 0.0  # only the methods move the clock
    assert runs["epoch"].training_time == pytest.approx(0.5)  # the scoring pass is counted once
    assert runs["batch"].training_time == 0.0  # 3 steps x 0.5 s of BATCH_START work left out


def test_the_requirement_line_says_whether_within_30_percent_holds_at_two_standard_deviations():
    def summary(mean, std):
        return {"test_perplexity": {"mean": mean, "std": std}}

    change, spread = requirement_change({"mean": 100.0, "std": 2.0}, {"mean": 128.0, "std": 2.56})
    assert change == pytest.approx(28.0) and spread == pytest.approx(128 * (2 * 0.02 ** 2) ** 0.5)
    line, = requirement_line({"transformer_baseline": summary(100.0, 2.0), "resnet_bk_baseline": summary(128.0, 2.56)})
    assert "is met" in line and "undecided" in line  # 28% +- 2 x 3.6%: the line is inside the band
    line, = requirement_line({"transformer_baseline": summary(100.0, 0.1), "resnet_bk_baseline": summary(110.0, 0.1)})
    assert "still met" in line
    line, = requirement_line({"transformer_baseline": summary(100.0, 0.1), "resnet_bk_baseline": summary(150.0, 0.1)})
    assert "NOT met even so" in line
    line, = requirement_line({"transformer_baseline": summary(100.0, None), "resnet_bk_baseline": summary(120.0, None)})
    assert "one seed" in line


def test_resnet_bk_selective_is_the_recall_studys_variant_with_no_method(tmp_path, tiny_data):
    config = model_config("resnet_bk_selective", BenchmarkConfig.from_dict(PRESETS["smoke"]))
    m = config.model
    assert (m.architecture, m.bk_channels, m.bk_coupling, m.bk_readout, m.bk_coupling_max) == (
        "resnet_bk", 64, "selective", "gated", 128.0)
    assert not any(config.enabled(flag) for flag in methods.FLAGS)
    out = tmp_path / "out"
    assert cli_main(["--preset", "smoke", "--data-dir", str(tiny_data), "--output-dir", str(out), "--quiet", "--device",
                     "cpu", "--threads", "1", "--epochs", "1", "--models", "resnet_bk_selective"]) == 0
    doc = json.loads((out / "resnet_bk_selective_results.json").read_text())
    assert doc["causal"] is True and math.isfinite(doc["test_perplexity"]) and doc["decay_law"]["blocks"]


def _children(pid: int) -> list:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.is_file() else []


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc (Linux)")
def test_a_terminated_benchmark_stops_its_worker_process(tmp_path, tiny_data):
    """SIGTERM to the benchmark (a kill, a session's end) stops the worker process that trains the
    model too: no orphan goes on training and racing the next invocation for the same run."""
    out = tmp_path / "out"
    parent = subprocess.Popen([sys.executable, "-m", "resnetbk.bench", "--preset", "smoke", "--data-dir", str(tiny_data),
                               "--output-dir", str(out), "--quiet", "--device", "cpu", "--threads", "1",
                               "--models", "resnet_bk_baseline", "--epochs", "200"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not workers:  # the worker is a spawned python, not the tracker
            workers = [c for c in _children(parent.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
            time.sleep(0.5)
        assert workers, "the benchmark never started its worker process"
        time.sleep(2.0)
        parent.terminate()
        _, errors = parent.communicate(timeout=120)
        for worker in workers:
            for _ in range(240):
                if not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"worker {worker} still runs after its parent was terminated")
        assert "interrupted" in errors.lower()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.communicate()
        for worker in workers:  # never leave one behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)


def test_results_carry_the_revision_of_the_code_the_process_imported(monkeypatch):
    """A commit made while a long run trains must not relabel it: the revision is read once, when
    the process imports the package, not when the results are written."""
    monkeypatch.setattr(env, "git_revision", lambda: "f" * 40)  # as if HEAD moved since the import
    assert env.environment()[1] == env.IMPORTED_REVISION != "f" * 40
