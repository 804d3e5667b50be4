"""Pruning and quantization: masks on a schedule, expert removal, fake INT8 with torch's modules,
the export (sparse, INT8) and its loader, INT8 inference through torch's quantized kernels."""

import math

import pytest
import torch

from helpers_methods import VOCAB, run_training, small_config, synthetic_corpus, tokens
from resnetbk.bench.recipe import make_model
from resnetbk.methods import pruning, quantization
from resnetbk.methods.export import effective_state_dict, export_model, load_export
from resnetbk.models import build_model


def test_the_sparsity_schedule_is_zhu_and_guptas_cubic():
    values = [pruning.scheduled_sparsity(s, 100, 0.2, 0.8, 0.75) for s in range(101)]
    assert values[:20] == [0.0] * 20 and values[80:] == [0.75] * 21
    assert values == sorted(values)
    assert values[50] == pytest.approx(0.75 * (1 - 0.5 ** 3))


def test_pruning_masks_the_smallest_weights_and_masks_only_grow():
    model = make_model(small_config(use_pruning=True), VOCAB)
    module = model.blocks[0].moe.experts[0][0]  # (32, 16): 512 weights
    mask = pruning.masks(model)["blocks.0.moe.experts.0.0"]
    with torch.no_grad():
        module.parametrizations.weight.original.copy_(torch.arange(1.0, 513.0).view(32, 16))
    pruning.prune_to(module, mask, 0.25)
    assert mask.mask.flatten()[:128].sum() == 0 and mask.mask.flatten()[128:].sum() == 384
    assert bool((module.weight.flatten()[:128] == 0).all())
    with torch.no_grad():  # the pruned weights grow large: they stay pruned
        module.parametrizations.weight.original.mul_(-1)
    pruning.prune_to(module, mask, 0.5)
    assert mask.mask.flatten()[:128].sum() == 0 and int((mask.mask == 0).sum()) == 256


def test_a_pruning_run_reaches_the_target_exports_sparse_and_reloads(tmp_path):
    corpus = synthetic_corpus()
    config = small_config(use_pruning=True, pruning_target_sparsity=0.75, pruning_start_fraction=0.1,
                          pruning_end_fraction=0.6, pruning_interval=2, expert_removal_threshold=0.0, epochs=2)
    result = run_training(config, corpus, tmp_path)
    figures = result.methods["use_pruning"]
    assert figures["sparsity_of_pruned_matrices"] == pytest.approx(0.75, abs=0.01)
    assert figures["nonzero_parameters"] < 0.4 * figures["parameters"]
    export = figures["export"]
    assert export["bytes"] < 0.75 * export["dense_bytes"]  # tiny tensors: the file format's overhead weighs
    assert result.model_size_mb == pytest.approx(export["bytes"] / 2**20)
    assert "size on disk" in result.model_size_method
    plain = run_training(small_config(epochs=2), corpus, tmp_path, name="plain")
    assert "in memory" in plain.model_size_method
    # The export loads back into a plain model with the same weights.
    model = make_model(config, VOCAB)
    state = load_export(export["path"], like=model.state_dict())
    reference = build_model(model.options)
    reference.load_state_dict(state)
    expert = reference.blocks[0].moe.experts[0][0].weight
    assert float((expert == 0).float().mean()) == pytest.approx(0.75, abs=0.02)
    assert bool((reference.blocks[0].moe.router.weight != 0).all())  # the router is never pruned


def test_at_75_percent_sparsity_the_export_is_about_3_5x_smaller(tmp_path):
    model = make_model(small_config(use_pruning=True, d_model=32), 2000)
    found = pruning.prunable(model)
    for name, mask in pruning.masks(model).items():
        pruning.prune_to(found[name], mask, 0.75)
    exported = export_model(model, tmp_path / "m.pt")
    assert exported["tensors"]["sparse"] == len(found)
    assert exported["dense_bytes"] / exported["bytes"] > 3.0  # 1 / (0.25 + 1/32) = 3.6 for the matrices
    state = load_export(exported["path"])
    for key, value in effective_state_dict(model).items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_rarely_used_experts_are_removed_and_never_chosen_again():
    from types import SimpleNamespace

    config = small_config(use_pruning=True, expert_removal_threshold=0.15)
    model = make_model(config, VOCAB)
    routing = model.blocks[0].moe.expert_routing  # pruning's own record, attached beside the MoE
    routing.routed_tokens.copy_(torch.tensor([70.0, 20.0, 5.0, 5.0]))
    for block in model.blocks[1:]:
        block.moe.expert_routing.routed_tokens.copy_(torch.tensor([25.0, 25.0, 25.0, 25.0]))
    state = SimpleNamespace(model=model, figures={})
    pruning.Pruning(config)._remove_experts(state)
    assert routing.expert_alive.tolist() == [True, True, False, False]  # shares 0.7, 0.2, 0.05, 0.05
    assert [e["expert"] for e in state.figures["use_pruning"]["experts_removed"]] == [2, 3]
    assert model.blocks[1].moe.expert_routing.expert_alive.all()
    chosen = []
    model.blocks[0].moe.register_forward_hook(lambda m, a, out: chosen.append(routing.routed_tokens.clone()))
    model.train()
    routing.routed_tokens.zero_()
    model(tokens(b=4, n=16))
    assert chosen[-1].tolist()[2:] == [0.0, 0.0] and sum(chosen[-1].tolist()) == 64


def test_fake_int8_weights_sit_on_the_per_channel_grid_and_observers_freeze_in_eval():
    model = make_model(small_config(use_quantization=True), VOCAB)
    model.train()
    model(tokens(b=2, n=16))
    model.eval()  # in training, every read of a fake-quantized weight updates its observer
    layer = model.blocks[0].moe.router
    fq = quantization.weight_fake_quant(layer).fake_quant
    scale, zero = fq.scale, fq.zero_point
    assert bool((zero == 0).all())
    q = layer.weight / scale[:, None]
    torch.testing.assert_close(q, q.round(), rtol=0, atol=1e-4)
    assert q.abs().max() <= 128
    before = layer.input_fake_quant.fake_quant.scale.clone()
    with torch.no_grad():
        model(tokens(b=2, n=16, seed=7) * 0 + 3)
    assert torch.equal(layer.input_fake_quant.fake_quant.scale, before)


def test_the_int8_export_is_about_4x_smaller_and_reloads_to_the_same_weights(tmp_path):
    config = small_config(use_quantization=True, d_model=32)
    model = make_model(config, 2000)
    model.train()
    model(torch.randint(2000, (2, 16)))
    exported = export_model(model, tmp_path / "m.pt", int8_scales=quantization.int8_scales(model))
    # Under 4x: per-channel float32 scales (1/d of a matrix's bytes) and the float32 norms,
    # biases and position embedding.
    assert exported["dense_bytes"] / exported["bytes"] > 3.0
    state = load_export(exported["path"])
    effective = effective_state_dict(model)
    for key in ("lm_head.weight", "token_embedding.weight", "blocks.0.moe.experts.0.0.weight"):
        torch.testing.assert_close(state[key], effective[key].float(), rtol=1e-5, atol=1e-6)


def test_int8_inference_through_torchs_kernels_stays_close_to_float(tmp_path):
    corpus = synthetic_corpus()
    config = small_config(use_quantization=True, epochs=1)
    result = run_training(config, corpus, tmp_path)
    figures = result.methods["use_quantization"]
    float_ppl, int8_ppl = figures["float_inference"]["perplexity"], figures["int8_inference"]["perplexity"]
    assert math.isfinite(int8_ppl) and abs(int8_ppl / float_ppl - 1) < 0.1
    assert figures["int8_inference"]["tokens_per_second"] > 0
    model = quantization.quantize_for_inference(quantization.float_copy(make_model(config, VOCAB)))
    assert "DynamicQuantizedLinear" in repr(model.lm_head) and "QuantizedEmbedding" in repr(model.token_embedding)


def test_group_int4_experts_use_16_levels_per_group():
    model = make_model(small_config(use_quantization=True, quantization_int4_experts=True,
                                    quantization_group_size=8), VOCAB)
    weight = model.blocks[0].moe.experts[0][0].weight  # (32, 16): two groups of 8 per row
    for group in weight.detach().view(32, 2, 8).flatten(0, 1):
        assert group.unique().numel() <= 16


def test_parameter_counts_see_through_the_compression_parametrizations():
    plain = make_model(small_config(), 60).parameter_counts()
    compressed = make_model(small_config(use_pruning=True, use_quantization=True), 60).parameter_counts()
    assert compressed == plain


def test_only_the_capacity_matrices_are_pruned():
    model = make_model(small_config(use_pruning=True, use_act=True, use_early_exit=True, use_sparse_bk=True,
                                    use_multi_scale=True, use_koopman=True, use_physics_informed=True, n_layers=4), 200)
    names = set(pruning.prunable(model))
    assert {"token_embedding", "lm_head", "blocks.0.moe.experts.0.0", "blocks.0.moe.experts.3.2"} <= names
    for never in ("router", "v_proj", "output_proj", "gate", "halting", "confidence", "shorten", "upsample",
                  "koopman", "energies", "position_embedding"):
        assert not any(never in name for name in names), never
    assert set(pruning.masks(model)) == names


def test_the_small_dense_control_has_the_pruned_models_non_zero_count():
    from resnetbk.models import ModelOptions, build_model

    options = ModelOptions("resnet_bk", 2000, 32, 2, 16)
    width = pruning.small_dense_width(options, 0.8)
    model = build_model(options)
    capacity = sum(m.weight.numel() for m in pruning.prunable(model).values())
    kept = sum(p.numel() for p in model.parameters()) - 0.8 * capacity
    dense = sum(p.numel() for p in build_model(options.replace(d_model=width)).parameters())
    below = sum(p.numel() for p in build_model(options.replace(d_model=width - 1)).parameters())
    above = sum(p.numel() for p in build_model(options.replace(d_model=width + 1)).parameters())
    assert width < 32 and abs(dense - kept) <= min(abs(below - kept), abs(above - kept))


def test_at_80_percent_sparsity_the_bitmask_export_reaches_4x(tmp_path):
    model = make_model(small_config(use_pruning=True, d_model=64, n_layers=2), 20_000)
    found = pruning.prunable(model)
    for name, mask in pruning.masks(model).items():
        pruning.prune_to(found[name], mask, 0.8)
    exported = export_model(model, tmp_path / "m.pt")
    assert exported["dense_bytes"] / exported["bytes"] > 3.9  # 1 / (0.2 + 1/32) = 4.3 for the pruned matrices


def test_qat_runs_in_a_late_window_with_observers_frozen_near_the_end(tmp_path):
    config = small_config(use_quantization=True, epochs=2, quantization_start_fraction=0.5,
                          quantization_freeze_fraction=0.75)
    result = run_training(config, synthetic_corpus(), tmp_path)
    figures = result.methods["use_quantization"]
    total = result.steps
    assert figures["qat_started_at_step"] == math.ceil(0.5 * total)
    assert figures["observers_frozen_at_step"] == math.ceil(0.75 * total)
    assert figures["mode"] == "qat" and math.isfinite(figures["int8_inference"]["perplexity"])
    # The ranges were observed on the trained weights from the window's start, not on the initial
    # ones the parametrization saw when it was registered.
    q = quantization
    model = make_model(config, VOCAB)
    layer = model.blocks[0].moe.experts[0][0]
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(10.0)  # the weights grow after registration
    fq = q.weight_fake_quant(layer)
    fq.reset()
    model.train()
    model(tokens(b=2, n=16))
    torch.testing.assert_close(fq.fake_quant.scale, q.per_row_scales(layer.parametrizations.weight.original.detach()),
                               rtol=0.05, atol=0)
    model = make_model(config, VOCAB)
    fq = quantization.weight_fake_quant(model.blocks[0].moe.experts[0][0])
    fq.enabled = False  # before the window: the weight passes through unrounded
    w = model.blocks[0].moe.experts[0][0].parametrizations.weight.original
    assert torch.equal(model.blocks[0].moe.experts[0][0].weight, w)


def test_tiny_heads_stay_float_and_the_lm_heads_input_is_not_fake_quantized():
    model = make_model(small_config(use_quantization=True, use_act=True, use_early_exit=True, use_sparse_bk=True), VOCAB)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.out_features == 1:
            assert quantization.weight_fake_quant(module) is None and not hasattr(module, "input_fake_quant"), name
    assert quantization.weight_fake_quant(model.lm_head) is not None and not hasattr(model.lm_head, "input_fake_quant")
    assert quantization.weight_fake_quant(model.blocks[0].moe.router) is not None


def test_post_training_int8_trains_in_float_and_exports_int8(tmp_path):
    config = small_config(use_quantization=True, quantization_mode="ptq", epochs=1, d_model=32)
    assert quantization.weight_fake_quant(make_model(config, VOCAB).lm_head) is None  # nothing attached
    result = run_training(config, synthetic_corpus(), tmp_path)
    figures = result.methods["use_quantization"]
    assert figures["mode"] == "ptq" and figures["export"]["tensors"]["int8"] > 0
    assert abs(figures["int8_inference"]["perplexity"] / figures["float_inference"]["perplexity"] - 1) < 0.1
    with pytest.raises(ValueError, match="quantization_mode: expected one of"):
        small_config(use_quantization=True, quantization_mode="awq")


def test_int4_experts_export_packed_two_a_byte_and_reload_exactly(tmp_path):
    from resnetbk.methods.export import pack_int4, unpack_int4

    w = torch.randn(5, 19)
    entry = pack_int4(w, 8)
    assert entry["int4"].dtype == torch.uint8 and entry["int4"].numel() == (5 * 19 + 1) // 2
    grid = unpack_int4(entry)
    assert torch.equal(unpack_int4(pack_int4(grid, 8)), grid)  # values on the grid come back exactly
    assert (grid - w).abs().max() <= entry["scale"].max() / 2 + 1e-6
    config = small_config(use_quantization=True, quantization_int4_experts=True, quantization_group_size=8, d_model=32)
    model = make_model(config, 2000)
    model.train()
    model(torch.randint(2000, (2, 16)))
    groups = {f"blocks.{b}.moe.experts.{e}.{k}.weight": 8 for b in range(3) for e in range(4) for k in (0, 2)}
    exported = export_model(model, tmp_path / "m.pt", int8_scales=quantization.int8_scales(model), int4_groups=groups)
    assert exported["tensors"]["int4"] == len(groups)
    state = load_export(exported["path"])
    effective = effective_state_dict(model)
    for key in groups:
        torch.testing.assert_close(state[key], effective[key].float(), rtol=1e-5, atol=1e-6)
