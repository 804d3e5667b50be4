"""Small models and traced steps for the method tests."""

import torch

from resnetbk.flops import FlopsTracer
from resnetbk.models import ModelOptions, build_model

VOCAB = 50


def tiny(seed: int = 0, **options):
    torch.manual_seed(seed)
    fields = dict(d_model=16, n_layers=4, n_seq=20, dropout=0.0)
    fields.update(options)
    return build_model(ModelOptions("resnet_bk", VOCAB, **fields))


def tokens(b: int = 3, n: int = 20, seed: int = 1):
    return torch.randint(VOCAB, (b, n), generator=torch.Generator().manual_seed(seed))


def traced_forward(model, x, *, backward: bool = False) -> dict:
    """The priced trace of one forward (and backward) of ``model`` on ``x``."""
    tracer = FlopsTracer()
    with tracer:
        logits = model(x)
        if backward:
            (logits.logsumexp(-1).mean() + sum(model.aux_losses().values())).backward()
    return tracer.report()


def component_flops(report: dict, prefix: str, phase: str = "forward") -> float:
    return sum(p.get(phase, 0) for c, p in report["by_component"].items() if c.startswith(prefix))
