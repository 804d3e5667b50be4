"""``bench gpu-evidence``: its dry run (every stage at tiny sizes on the CPU, Triton through its
interpreter) and its errors, so that the script works the first time a GPU is lent."""

from __future__ import annotations

import json

import pytest

from resnetbk.bench import gpu_evidence
from resnetbk.bench.cli import main


def test_the_dry_run_runs_every_stage_and_writes_its_files(tiny_data, tmp_path):
    out = tmp_path / "gpu"
    assert main(["gpu-evidence", "--dry-run", "--output-dir", str(out), "--data-dir", str(tiny_data)]) == 0
    evidence = json.loads((out / "evidence.json").read_text())
    assert list(evidence["stages"]) == list(gpu_evidence.STAGES)
    assert {name: stage["status"] for name, stage in evidence["stages"].items()} == dict.fromkeys(gpu_evidence.STAGES, "done")
    assert "passed" in evidence["stages"]["tests"]["summary"]
    kernels = evidence["stages"]["kernels"]
    assert {r["implementation"] for r in kernels["rows"]} == {"triton", "torch", "attention_layer"}
    assert all(r["g_elements_per_s"] > 0 and r["share_of_bandwidth"] > 0 for r in kernels["rows"])
    assert len(kernels["targets"]) == 2
    runs = evidence["stages"]["training"]["runs"]
    assert set(runs) == set(gpu_evidence.MODELS)
    assert all(r["status"] == "done" and r["steps"] >= 1 and r["tokens_per_second"] > 0 for r in runs.values())
    assert (out / "reproduction" / "reproduction.json").is_file()
    readme = (out / "README.md").read_text()
    assert "dry run" in readme and "BK-Core forward+backward" in readme and "resnet_bk_full" in readme
    assert f"gpu-evidence --dry-run --output-dir {out}" in readme


def test_a_stage_out_of_time_is_recorded_and_the_rest_still_written(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_evidence.Run, "left", lambda self: 0.0)
    out = tmp_path / "late"
    assert main(["gpu-evidence", "--dry-run", "--output-dir", str(out), "--data-dir", str(tiny_data),
                 "--stages", "environment,kernels"]) == 1
    stages = json.loads((out / "evidence.json").read_text())["stages"]
    assert stages == {"environment": {"status": "not run: the time budget was spent"},
                      "kernels": {"status": "not run: the time budget was spent"}}


@pytest.mark.parametrize("argv, message", [
    (["--budget-minutes", "0"], "--budget-minutes: expected a positive"),
    (["--stages", "environment,bogus"], "--stages: unknown bogus"),
])
def test_bad_options_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["gpu-evidence", "--dry-run", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_no_gpu_and_no_data_are_one_line_each(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_evidence.torch.cuda, "is_available", lambda: False)
    assert main(["gpu-evidence", "--output-dir", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    monkeypatch.delenv("RESNETBK_DATA", raising=False)
    assert main(["gpu-evidence", "--dry-run", "--output-dir", str(tmp_path), "--data-dir", str(tmp_path)]) == 2
    assert "--data-dir: expected a folder with wiki.train.tokens" in capsys.readouterr().err


def test_card_names_become_folder_names():
    assert gpu_evidence._card_slug("NVIDIA H200") == "h200"
    assert gpu_evidence._card_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"


def test_a_run_stopped_at_the_budget_still_reports_its_step_log(tmp_path):
    folder = tmp_path / "original" / "resnet_bk_baseline"
    folder.mkdir(parents=True)
    (folder / "resnet_bk_baseline_steps.csv").write_text(
        "step,epoch,lr,loss,total_loss,grad_norm,tokens_per_second,flops_traced,skipped\n"
        "1,1,0.001,10.4,10.4,1.3,500.0,1,0\n2,1,0.001,10.3,10.3,1.2,9000.0,0,0\n3,2,0.001,10.2,10.2,1.1,11000.0,0,0\n")
    row = gpu_evidence.training_row(folder, "resnet_bk_baseline", None)
    assert row["status"] == "stopped at the time budget (resumable)"
    assert row["steps"] == 3 and row["epochs_started"] == 2 and row["tokens_per_second"] == 10000.0
