"""``use_act``: adaptive computation time, per token over the blocks.

What it does: after every block a halting unit (``d -> 1``) gives each token a halting
probability; a token halts once their sum reaches ``act_threshold`` and its output is the
halting-weighted mean of its states (``methods.depth``, attached as the model's ``depth``). Halted tokens really skip the
later blocks' feed-forward (MoE) and read-out work: their rows are left out of the gather, and
their state is carried forward unchanged so that later positions' BK-Core recursions still see
a complete sequence. The ponder cost ``N + R`` (blocks used plus the remainder, mean over
tokens) is the loss term ``ponder``, weighted by ``ponder_weight``; ``act_bias_init`` sets how
deep tokens go at first.

Records: mean blocks per token in training (per epoch) and at evaluation, with the evaluation's
forward FLOPs per token.

Measured effect (``results/ablation_quick``: quick preset, 150 steps, 2 CPU threads): tokens
used 2.00 of 4 blocks at evaluation (50% fewer, the claim of 30% held), test perplexity +0.8%,
yet forward FLOPs per step only 0.98x: the 33k-word LM head and the BK-Core recursion still run
for every token.

Paper: Graves 2016, "Adaptive Computation Time for Recurrent Neural Networks"; per position
over depth as in Dehghani et al. 2019, "Universal Transformers".
"""

from torch import nn

from .base import Method, check_number
from .depth import attached_depth
from .evaluation import record_evaluation


class ACT(Method):
    flag = "use_act"
    claim = "30% fewer layers"
    acts_on = "the depth each token runs (halting units; a ponder loss)"
    paper = "Graves 2016, Adaptive Computation Time for Recurrent Neural Networks; Dehghani et al. 2019, Universal Transformers"
    hyperparameters = {"act_threshold": 0.99, "ponder_weight": 0.01, "act_bias_init": 1.0}
    attach_after = ("use_multi_scale",)  # the halting units follow the model's stages

    @classmethod
    def validate(cls, config) -> None:
        check_number(cls.settings_of(config), "act_threshold", low=0.0, high=1.0, low_open=True)
        check_number(cls.settings_of(config), "ponder_weight", low=0.0)
        check_number(cls.settings_of(config), "act_bias_init", low=-20.0, high=20.0)

    @classmethod
    def attach(cls, model, config) -> None:
        units = model.init_attached(attached_depth(model).halting_units(cls.settings_of(config).act_threshold))
        for unit in units:  # the bias sets how deep tokens go at first (the model's init zeroes biases)
            nn.init.constant_(unit.bias, cls.settings_of(config).act_bias_init)

    def __init__(self, config):
        super().__init__(config)
        self._blocks, self._steps = 0.0, 0

    def on_loss(self, state) -> None:
        depth = state.model.depth
        state.loss_terms["ponder"] = self.settings.ponder_weight * state.aux_losses["ponder"]
        self._blocks += float(depth.blocks_per_token.float().mean())
        self._steps += 1

    def on_epoch_end(self, state) -> None:
        figures = state.figures.setdefault(self.flag, {"n_layers": self.config.model.n_layers})
        figures.setdefault("mean_blocks_per_token_train", []).append(self._blocks / max(self._steps, 1))
        self._blocks, self._steps = 0.0, 0

    def on_evaluation(self, state) -> None:
        figures = state.figures.setdefault(self.flag, {"n_layers": self.config.model.n_layers})
        figures["evaluation"] = record_evaluation(state, blocks=True)
        figures["fraction_of_layers_used"] = figures["evaluation"]["mean_blocks_per_token"] / self.config.model.n_layers

    @classmethod
    def assess(cls, row):
        figures = row.figures
        fraction = figures.get("fraction_of_layers_used")
        if fraction is None:
            return "-", "not measured"
        blocks = figures["evaluation"]["mean_blocks_per_token"]
        own = f"{blocks:.2f} of {figures['n_layers']} blocks per token at evaluation ({100 * (1 - fraction):.0f}% fewer)"
        held = fraction <= 0.7
        return own, ("held" if held else f"not borne out: {100 * (1 - fraction):.0f}% fewer blocks (claimed 30%)") + (
            f"; forward FLOPs per training step {row.forward_flops_ratio:.2f}x (the LM head and the BK-Core "
            f"recursion still run for every token); test perplexity {row.test_perplexity_change_percent:+.1f}%")
