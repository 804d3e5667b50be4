"""Small models and traced steps for the method tests."""

import torch

from helpers import make_config
from resnetbk import methods
from resnetbk.flops import FlopsTracer
from resnetbk.models import ModelOptions, build_model

VOCAB = 50
#: ``tiny``'s switches for the methods that change the model, and their hyper-parameters.
SWITCHES = {"act": "use_act", "multi_scale": "use_multi_scale", "sparse_bk": "use_sparse_bk",
            "early_exit": "use_early_exit", "spectral_z": "use_spectral_z"}
HYPERPARAMETERS = {name for m in methods.REGISTRY for name in m.hyperparameters}


def tiny(seed: int = 0, **options):
    """A small ResNet-BK; ``act=True`` (and the other ``SWITCHES``) with their hyper-parameters
    attach those methods as a run does (``methods.attach_all``)."""
    torch.manual_seed(seed)
    flags = {SWITCHES[k]: options.pop(k) for k in list(options) if k in SWITCHES}
    hyper = {k: options.pop(k) for k in list(options) if k in HYPERPARAMETERS}
    fields = dict(d_model=16, n_layers=4, n_seq=20, dropout=0.0)
    fields.update(options)
    model = build_model(ModelOptions("resnet_bk", VOCAB, **fields))
    if flags:
        config = make_config(d_model=fields["d_model"], n_layers=fields["n_layers"], n_seq=fields["n_seq"],
                             dropout=fields["dropout"], **{**{f: False for f in methods.FLAGS}, **flags}, **hyper)
        methods.attach_all(model, config)
    return model


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


def synthetic_corpus(train_tokens: int = 1200, eval_tokens: int = 300, seed: int = 0):
    """A corpus in memory: random ids over ``VOCAB`` words, with a skewed unigram distribution
    (so that unigram difficulty differs between windows)."""
    from resnetbk import data as wt2

    gen = torch.Generator().manual_seed(seed)
    weights = torch.linspace(1.0, 0.05, VOCAB)

    def draw(n):
        return torch.multinomial(weights, n, replacement=True, generator=gen)

    return wt2.Corpus(vocab=[f"w{i}" for i in range(VOCAB)], train=draw(train_tokens), valid=draw(eval_tokens),
                      test=draw(eval_tokens), source="synthetic")


def small_config(**changes):
    """A tiny ResNet-BK training config with every method off (change what a test needs)."""
    fields = dict(d_model=16, n_layers=3, n_seq=16, batch_size=4, epochs=2, eval_batch_size=4, dropout=0.0,
                  device="cpu", threads=1, method_eval_tokens=200, flops_trace_interval=1,
                  **{f: False for f in methods.FLAGS})
    fields.update(changes)
    return make_config(**fields)


def run_training(config, corpus, tmp_path, name="run", **kwargs):
    from resnetbk.bench.recipe import train_model as train

    return train(config, corpus, tmp_path / name, quiet=True, log=lambda *_: None, steps_csv=tmp_path / f"{name}.csv",
                 **kwargs)
