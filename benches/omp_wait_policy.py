"""Does torch's OpenMP spin-waiting slow the Rust kernels?  ``python benches/omp_wait_policy.py``

After a parallel region, the OpenMP workers of torch (GNU libgomp) spin for a while before they
sleep (``OMP_WAIT_POLICY`` unset: ~300,000 spins; ``ACTIVE``: spin; ``PASSIVE``: sleep at once;
``GOMP_SPINCOUNT=N``: N spins). The Rust kernels run on that same team since revision
``538bf92`` (on a rayon pool of their own before, which spinning workers starved), but the spin
still decides how fast back-to-back torch ops follow each other and how much a loaded machine
suffers. libgomp reads the settings once, when it loads, so each runs in a fresh process, side by
side in one run: idle, then with a competing process busy on the same cores (a loaded machine).
Figures: median ms of

- ``bk``: ``bk_core`` forward+backward at 32 x 2048 (float32, causal), alone;
- ``bk after matmul``: the same right after a torch matmul (the interleaving of a training step);
- ``step resnet_bk`` / ``step transformer``: a training step of the quick preset's models
  (batch 32, N 128, d 64, WikiText-2's vocabulary), which are mostly torch ops, so that a
  policy that helps the kernels but slows torch shows it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

#: ``unset``, an ``OMP_WAIT_POLICY`` value, or ``GOMP_SPINCOUNT=N`` (libgomp's spin before it
#: sleeps, policy unset); ``RESNETBK_OMP_POLICIES`` (comma-separated) chooses others.
POLICIES = tuple(os.environ.get("RESNETBK_OMP_POLICIES", "unset,PASSIVE").split(","))
THREADS = 2


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure() -> dict:
    """Runs in the child process (the policy already in its environment). torch loads before
    resnetbk, so that resnetbk's own default (PASSIVE where unset) does not apply to "unset"."""
    import torch

    import resnetbk
    from resnetbk.bench.config import BenchmarkConfig, model_config
    from resnetbk.bench.recipe import make_model
    from resnetbk.models import ModelOptions
    from resnetbk.train.optim import make_optimizer
    from resnetbk.train.step import train_step

    torch.set_num_threads(THREADS)
    gen = torch.Generator().manual_seed(0)
    diag = (-2.0 + torch.randn(32, 1, 2048, generator=gen)).requires_grad_()
    upper = torch.ones(2047)
    a = torch.randn(256, 256)

    def bk():
        diag.grad = None
        resnetbk.bk_core(diag, upper).imag.sum().backward()

    def bk_after_matmul():
        (a @ a).sum()
        bk()

    figures = {"bk": _median_ms(bk, 200), "bk after matmul": _median_ms(bk_after_matmul, 200)}
    for name in ("resnet_bk_baseline", "transformer_baseline"):
        torch.manual_seed(0)
        config = model_config(name, BenchmarkConfig(model=ModelOptions(dropout=0.0)))
        model = make_model(config, 33_278)
        optimizer = make_optimizer(model, config)
        tokens = torch.randint(33_278, (32, 128))

        def step(model=model, optimizer=optimizer, tokens=tokens):
            train_step(model, optimizer, tokens, tokens)  # the loop's own step (no clipping here)

        figures[f"step {name.split('_baseline')[0]}"] = _median_ms(step, 15)
    return figures


def _load():
    """The competing work: torch matmuls on the same number of threads, until killed."""
    import torch

    torch.set_num_threads(THREADS)
    a = torch.randn(512, 512)
    while True:
        a = torch.tanh(a @ a)


def run(policy: str) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if policy.startswith("GOMP_SPINCOUNT="):
        env["GOMP_SPINCOUNT"] = policy.split("=", 1)[1]
    elif policy != "unset":
        env["OMP_WAIT_POLICY"] = policy
    code = "import json, omp_wait_policy as b; print(json.dumps(b.measure()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=os.path.dirname(os.path.abspath(__file__)),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    results = {}
    for load in ("idle", "loaded"):
        loader = None
        if load == "loaded":
            loader = multiprocessing.get_context("spawn").Process(target=_load, daemon=True)
            loader.start()
            time.sleep(2)
        try:
            for policy in POLICIES:
                results[(load, policy)] = run(policy)
        finally:
            if loader is not None:
                loader.kill()
                loader.join()
    names = list(next(iter(results.values())))
    print(f"median ms, {THREADS} threads; policy = OMP_WAIT_POLICY")
    print("| machine | policy | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for (load, policy), figures in results.items():
        print(f"| {load} | {policy} | " + " | ".join(f"{figures[n]:.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()
