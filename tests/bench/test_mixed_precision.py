"""Mixed precision and the CPU's bf16 support: an error for the single flag on a CPU without
native bf16 (with an override), resnet_bk_full leaving the method out and saying why, and
nothing changed on a CPU that has it. The capability check is mocked: these tests must mean the
same on every machine."""

import pytest

from helpers import make_config
from resnetbk import data as wt2
from resnetbk import hardware, methods
from resnetbk.bench.config import PRESETS, BenchmarkConfig, model_config
from resnetbk.bench.options import build_configs, parse_args
from resnetbk.bench.recipe import train_model as train

MixedPrecision = methods.BY_FLAG["use_mixed_precision"]
SLOW = "this CPU (torch capability AVX2) has no native bf16 (AVX-512 BF16 or AMX), where bf16 matmuls run slowly"


@pytest.fixture
def slow_cpu(monkeypatch):
    monkeypatch.setattr("resnetbk.methods.mixed_precision.slow_bf16_reason", lambda: SLOW)


@pytest.fixture
def fast_cpu(monkeypatch):
    monkeypatch.setattr("resnetbk.methods.mixed_precision.slow_bf16_reason", lambda: None)


def cpu_config(**changes) -> BenchmarkConfig:
    return make_config(**{**PRESETS["smoke"], "device": "cpu", **changes})


def test_the_single_flag_is_a_named_error_on_a_cpu_without_native_bf16(slow_cpu):
    with pytest.raises(ValueError, match="use_mixed_precision: this CPU .* no native bf16.*allow_slow_bf16: true"):
        MixedPrecision.check_fast(cpu_config(use_mixed_precision=True))
    # The CLI says it before loading any data.
    with pytest.raises(ValueError, match="use_mixed_precision: .*--allow-slow-bf16"):
        build_configs(parse_args(["--preset", "smoke", "--device", "cpu", "--models", "resnet_bk_baseline", "--amp"]))


def test_the_override_runs_it_anyway(slow_cpu):
    MixedPrecision.check_fast(cpu_config(use_mixed_precision=True, allow_slow_bf16=True))
    configs = build_configs(parse_args(["--preset", "smoke", "--device", "cpu", "--models", "resnet_bk_full",
                                        "--allow-slow-bf16"]))
    assert configs[0].enabled("use_mixed_precision") and configs[0].left_out_methods == {}


def test_resnet_bk_full_leaves_it_out_and_says_why(slow_cpu):
    full = model_config("resnet_bk_full", cpu_config())
    assert not full.enabled("use_mixed_precision")
    assert list(full.left_out_methods) == ["use_mixed_precision"]
    assert "no native bf16" in full.left_out_methods["use_mixed_precision"]
    # Every other method of the original twelve is still on.
    on = {f for f in methods.ORIGINAL_FLAGS if full.enabled(f)}
    assert on == set(methods.ORIGINAL_FLAGS) - {"use_mixed_precision"}


def test_nothing_changes_on_a_cpu_with_native_bf16_or_on_cuda(fast_cpu, monkeypatch):
    full = model_config("resnet_bk_full", cpu_config())
    assert full.enabled("use_mixed_precision") and full.left_out_methods == {}
    MixedPrecision.check_fast(cpu_config(use_mixed_precision=True))
    monkeypatch.setattr("resnetbk.methods.mixed_precision.slow_bf16_reason", lambda: SLOW)
    # On a GPU the CPU's bf16 support does not matter (the config is only inspected, not run).
    assert model_config("resnet_bk_full", make_config(device="cuda")).enabled("use_mixed_precision")


@pytest.mark.parametrize("avx512_bf16, amx, native", [(True, False, True), (False, True, True), (False, False, False)])
def test_the_capability_query_reads_torchs_cpu_checks(monkeypatch, avx512_bf16, amx, native):
    import torch

    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert hardware.cpu_has_native_bf16() is native
    reason = hardware.slow_bf16_reason()
    assert (reason is None) if native else ("no native bf16" in reason and hardware.cpu_capability() in reason)


def test_a_model_left_out_method_is_in_its_results(tiny_data, tmp_path, slow_cpu):
    config = model_config("resnet_bk_full", cpu_config(data_dir=str(tiny_data), max_steps=2, epochs=1, threads=1,
                                                       evaluate_test=False))
    lines = []
    results = train(config, wt2.load_corpus(str(tiny_data)), tmp_path, quiet=True, log=lines.append)
    assert "no native bf16" in results.methods["use_mixed_precision"]["left_out"]
    assert any("use_mixed_precision left out" in line for line in lines)
