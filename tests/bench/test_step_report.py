"""``python -m resnetbk.bench step`` at a tiny shape: every figure present and consistent."""

import json

from resnetbk.bench.cli import main as cli_main
from resnetbk.bench.step_report import PARTS


def test_the_step_command_writes_its_table_and_json(tmp_path, capsys):
    out = tmp_path / "step"
    code = cli_main(["step", "--batch", "2", "--seq", "8", "--d-model", "8", "--layers", "2", "--vocab", "300",
                     "--steps", "2", "--profile-steps", "1", "--threads", "1", "--output-dir", str(out)])
    assert code == 0
    doc = json.loads((out / "step.json").read_text())
    assert doc["gemm_peak_gflops"] > 0
    assert [m["model"] for m in doc["models"]] == ["transformer_baseline", "resnet_bk_baseline"]
    for m in doc["models"]:
        assert m["tokens_per_second"] > 0 and m["flops_per_step"] > 0
        assert abs(m["achieved_gflops"] - m["flops_per_step"] / (m["ms_per_step"] / 1000) / 1e9) < 1e-6
        parts = m["breakdown_ms"]
        assert set(parts) == {*PARTS, "batch"}
        # The profiled shares, applied to the step: they add up to the step's time.
        assert abs(sum(v for k, v in parts.items() if k != "batch") - m["ms_per_step"]) < 1e-6
        # Every part of a step that exists at this shape took time.
        for part in ("head forward", "head backward", "blocks forward", "blocks backward", "optimizer"):
            assert m["profiled_breakdown_ms"][part] > 0, (m["model"], part)
        floor = m["floor"]
        assert floor["gradients_mb"] == floor["parameters_mb"] and floor["saved_activations_mb"] > 0
    table = (out / "step.md").read_text()
    assert "GEMM peak" in table and "resnet_bk_baseline" in table and table in capsys.readouterr().out


def test_bad_arguments_are_named(capsys):
    assert cli_main(["step", "--models", "gpt5"]) == 2
    assert "--models: expected names from" in capsys.readouterr().err
    assert cli_main(["step", "--steps", "0"]) == 2
    assert "--steps: expected a positive integer" in capsys.readouterr().err


def test_a_model_with_methods_is_refused(capsys):
    assert cli_main(["step", "--models", "resnet_bk_full"]) == 2
    assert "resnet_bk_full trains with optimization methods" in capsys.readouterr().err
