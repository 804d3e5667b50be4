"""``python -m resnetbk.bench gpu-evidence``: everything the package has to show on a GPU, in one run.

A GPU is lent rarely and briefly, so one command gathers all of it within a time budget
(``--budget-minutes``, default 8) and writes ``--output-dir`` (default ``results/gpu-<card>/``):

1. ``environment``: the card, its memory, its measured copy bandwidth, the versions.
2. ``tests``: the CUDA and Triton correctness tests (``tests/core/test_cuda.py``,
   ``tests/core/test_triton.py``), when this is a checkout with its ``tests/`` folder.
3. ``kernels``: the BK-Core forward+backward at 32 x 128 and 32 x 2048 through the Triton and the
   torch backends, beside one causal attention layer of the same width: G elements/s and the
   share of the measured bandwidth (28 bytes per element: the potentials read, the complex
   diagonal written, its gradient read and the potentials' gradient written), against the targets
   (>= 10 G el/s at 32 x 2048; no slower than attention at 32 x 128).
4. ``training``: the original preset (5 epochs of WikiText-2) for the Transformer, the ResNet-BK
   baseline and ``resnet_bk_full``, one process per model side by side on the one GPU (a step at
   this shape is launch-bound: several processes fill the card better than one); each run's
   results folder, tokens/s, peak GPU memory and perplexities.
5. ``reproductions``: with the time left, ``bench reproduce`` (PyTorch's word_language_model
   LSTM, 12 epochs, and Transformer, 6 epochs), resumable with ``--resume``.

Every stage runs in its own process with the time left as its limit; ``evidence.json`` and
``README.md`` are rewritten after each, so a stage that fails or runs out of time loses nothing
already measured (its entry says what happened). ``--dry-run`` runs the same stages at tiny sizes
on the CPU (Triton through its interpreter, a few training steps of the quick preset) and is part
of the test suite, so the script works the first time a GPU is lent.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..core import bk_core
from ..jsonfile import write_json_atomic
from ..measure.environment import environment, git_revision, machine

MODELS = ("transformer_baseline", "resnet_bk_baseline", "resnet_bk_full")
KERNEL_SHAPES = ((32, 128), (32, 2048))
DRY_KERNEL_SHAPES = ((4, 16), (4, 64))
BYTES_PER_ELEMENT = 28  # forward: 4 read + 8 written; backward: 8 + 4 read, 4 written
TARGET_G_ELEMENTS = 10.0  # forward+backward at 32 x 2048
STAGES = ("environment", "tests", "kernels", "training", "reproductions")


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m resnetbk.bench gpu-evidence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", help="default: results/gpu-<card> (results/gpu-dry-run with --dry-run)")
    p.add_argument("--data-dir", help="folder with wiki.{train,valid,test}.tokens (else $RESNETBK_DATA)")
    p.add_argument("--budget-minutes", type=float, default=8.0, help="the whole run's wall-time limit (default 8)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the script, measures nothing")
    p.add_argument("--kernel-json", help=argparse.SUPPRESS)  # internal: the kernels stage's own process
    args = p.parse_args(argv)
    if args.budget_minutes <= 0:
        p.error(f"--budget-minutes: expected a positive number of minutes, got {args.budget_minutes}")
    unknown = sorted(set(args.stages.split(",")) - set(STAGES))
    if unknown:
        p.error(f"--stages: unknown {', '.join(unknown)}; expected some of {', '.join(STAGES)}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.kernel_json:
        return _kernel_stage_process(args)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: gpu-evidence needs a CUDA GPU (none is visible); --dry-run checks the script on the CPU",
              file=sys.stderr)
        return 2
    data_dir = args.data_dir or os.environ.get("RESNETBK_DATA")
    if "training" in args.stages or "reproductions" in args.stages:
        if not data_dir or not Path(data_dir, "wiki.train.tokens").is_file():
            print(f"error: --data-dir: expected a folder with wiki.train.tokens, got {data_dir!r} "
                  "(or set RESNETBK_DATA; the GPU machine reaches no hub)", file=sys.stderr)
            return 2
    card = "dry-run" if args.dry_run else _card_slug(torch.cuda.get_device_name(0))
    output = Path(args.output_dir or f"results/gpu-{card}")
    output.mkdir(parents=True, exist_ok=True)
    run = Run(output, args, argv, data_dir, deadline=time.monotonic() + 60 * args.budget_minutes)
    for stage in STAGES:
        if stage in args.stages.split(","):
            run.stage(stage)
    print(f"GPU evidence in {output}/ ({run.elapsed():.0f} s)")
    return 0 if all(s.get("status") == "done" for s in run.evidence["stages"].values()) else 1


def _card_slug(name: str) -> str:
    """'NVIDIA H200' -> 'h200'; 'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'."""
    words = name.lower().replace("nvidia", "").split()
    return "-".join(w for w in ("".join(c for c in w if c.isalnum()) for w in words) if w) or "gpu"


class Run:
    """The stages, their limits and the files they leave."""

    def __init__(self, output: Path, args, argv: list, data_dir, deadline: float):
        self.output, self.args, self.data_dir, self.deadline = output, args, data_dir, deadline
        self.started = time.monotonic()
        self.device = "cpu" if args.dry_run else "cuda"
        self.evidence = {"command": " ".join(["python -m resnetbk.bench gpu-evidence", *argv]),
                         "dry_run": args.dry_run, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "budget_minutes": args.budget_minutes, "git_revision": git_revision(), "stages": {}}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def stage(self, name: str) -> None:
        if self.left() <= 5:
            self.evidence["stages"][name] = {"status": "not run: the time budget was spent"}
        else:
            print(f"== {name} ({self.left():.0f} s left)", flush=True)
            start = time.monotonic()
            try:
                entry = getattr(self, f"_{name}")()
            except subprocess.TimeoutExpired:
                entry = {"status": "stopped at the time budget"}
            except Exception as exc:  # a stage's failure is recorded; the others still run
                entry = {"status": f"failed: {type(exc).__name__}: {exc}"}
            entry.setdefault("status", "done")
            entry["seconds"] = round(time.monotonic() - start, 1)
            self.evidence["stages"][name] = entry
            print(f"   {name}: {entry['status']} ({entry['seconds']} s)", flush=True)
        write_json_atomic(self.output / "evidence.json", self.evidence)
        (self.output / "README.md").write_text(format_readme(self.evidence))

    def _python(self, argv, env=None, timeout=None, log=None) -> subprocess.CompletedProcess:
        with open(self.output / log, "w") if log else open(os.devnull, "w") as sink:
            return subprocess.run([sys.executable, *argv], env={**os.environ, **(env or {})}, stdout=sink,
                                  stderr=subprocess.STDOUT, timeout=timeout if timeout is not None else self.left(),
                                  check=False)

    def _environment(self) -> dict:
        entry = {"machine": machine(), "versions": environment()}
        if self.device == "cuda":
            props = torch.cuda.get_device_properties(0)
            entry.update(card=props.name, memory_gib=round(props.total_memory / 2**30, 1))
        entry["copy_bandwidth_gb_s"] = round(copy_bandwidth_gb_s(self.device, 2**22 if self.args.dry_run else 2**28), 1)
        if self.device == "cuda":
            torch.cuda.empty_cache()  # the training processes get the card's memory
        return entry

    def _tests(self) -> dict:
        tests = Path("tests/core")
        if not (tests / "test_triton.py").is_file():
            return {"status": "not run: no tests/ folder here (run from a checkout)"}
        files = [str(tests / "test_triton.py")] if self.args.dry_run else [str(tests / "test_cuda.py"),
                                                                            str(tests / "test_triton.py")]
        select = ["-k", "causal_prefix"] if self.args.dry_run else []
        result = self._python(["-m", "pytest", "-q", "-p", "no:cacheprovider", *files, *select], log="tests.log")
        summary = _last_line(self.output / "tests.log")
        return {"status": "done" if result.returncode == 0 else f"failed (pytest exit {result.returncode})",
                "summary": summary, "log": "tests.log"}

    def _kernels(self) -> dict:
        out = self.output / "kernels.json"
        env = {"TRITON_INTERPRET": "1"} if self.args.dry_run else {}
        argv = ["-m", "resnetbk.bench", "gpu-evidence", "--kernel-json", str(out)] + (["--dry-run"] if self.args.dry_run else [])
        result = self._python(argv, env=env, log="kernels.log")
        if result.returncode != 0:
            return {"status": f"failed (exit {result.returncode}; see kernels.log)"}
        rows = json.loads(out.read_text())["rows"]
        bandwidth = self.evidence["stages"].get("environment", {}).get("copy_bandwidth_gb_s")
        for row in rows:
            if bandwidth:
                row["share_of_bandwidth"] = row["g_elements_per_s"] * BYTES_PER_ELEMENT / bandwidth
        return {"rows": rows, "targets": kernel_targets(rows)}

    def _training(self) -> dict:
        runs, procs = {}, {}
        for model in MODELS:
            folder = self.output / "original" / model
            argv = ["-m", "resnetbk.bench", "--models", model, "--device", self.device, "--data-dir", self.data_dir,
                    "--output-dir", str(folder), "--quiet", "--resume"]
            argv += ["--preset", "quick", "--max-steps", "3", "--max-train-tokens", "3000"] if self.args.dry_run \
                else ["--preset", "original"]
            folder.mkdir(parents=True, exist_ok=True)
            log = open(folder / "run.log", "w")
            # Its own process group: at the budget's end the run and any worker it spawned stop.
            procs[model] = (subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True), log)
        for model, (proc, log) in procs.items():
            try:
                code = proc.wait(timeout=max(1.0, self.left()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = None
            log.close()
            runs[model] = training_row(self.output / "original" / model, model, code)
        statuses = {r["status"] for r in runs.values()}
        return {"runs": runs, "side_by_side": len(MODELS),
                "status": "done" if statuses == {"done"} else "; ".join(sorted(statuses))}

    def _reproductions(self) -> dict:
        folder = self.output / "reproduction"
        argv = ["-m", "resnetbk.bench", "reproduce", "--device", self.device, "--data-dir", self.data_dir,
                "--output-dir", str(folder), "--quiet", "--resume"]
        if self.args.dry_run:
            argv += ["--max-steps", "2", "--max-train-tokens", "2000"]
        folder.mkdir(parents=True, exist_ok=True)
        try:
            result = self._python(argv, log="reproduction/run.log")
        except subprocess.TimeoutExpired:
            return {"status": "stopped at the time budget (rerun with the same --output-dir: it resumes)",
                    "folder": "reproduction"}
        return {"status": "done" if result.returncode == 0 else f"failed (exit {result.returncode})",
                "folder": "reproduction", "summary": _last_line(folder / "run.log")}


def copy_bandwidth_gb_s(device: str, elements: int) -> float:
    """Achieved bandwidth of a device-to-device float32 copy: bytes read plus written per second."""
    src = torch.randn(elements, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _kernel_stage_process(args) -> int:
    """The kernels stage, in its own process (Triton's interpreter is chosen before its import)."""
    device = "cpu" if args.dry_run else "cuda"
    shapes = DRY_KERNEL_SHAPES if args.dry_run else KERNEL_SHAPES
    rows = kernel_rows(device, shapes, repeats=2 if args.dry_run else 20)
    write_json_atomic(Path(args.kernel_json), {"device": device, "rows": rows})
    return 0


def kernel_rows(device: str, shapes, repeats: int) -> list:
    """Forward+backward G elements/s per implementation and shape (median of ``repeats``)."""
    rows = []
    for b, n in shapes:
        gen = torch.Generator().manual_seed(0)
        v = (0.5 * torch.randn(b, n, generator=gen)).to(device).requires_grad_()
        upper = torch.ones(b, n - 1, device=device)
        impls = {"triton": lambda v, upper=upper: bk_core(v - 2.0, upper, backend="triton"),
                 "torch": lambda v, upper=upper: bk_core(v - 2.0, upper, backend="torch"),
                 "attention_layer": attention_layer(b, device)}
        for name, fn in impls.items():
            x = v.t().unsqueeze(0) if name == "attention_layer" else v
            seconds = _time_forward_backward(fn, x, v, device, repeats)
            rows.append({"implementation": name, "batch": b, "length": n, "ms": 1000 * seconds,
                         "g_elements_per_s": b * n / seconds / 1e9})
    return rows


def attention_layer(width: int, device: str):
    """One causal attention layer of ``width`` channels, ``(1, N, width) -> (1, N, width)``: the
    yardstick the BK-Core's GPU target is set against."""
    qkv = torch.nn.Linear(width, 3 * width, device=device)
    proj = torch.nn.Linear(width, width, device=device)

    def layer(x):
        q, k, v = qkv(x).unsqueeze(1).chunk(3, dim=-1)
        return proj(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1))

    return layer


def _time_forward_backward(fn, x, leaf, device: str, repeats: int) -> float:
    def once():
        out = fn(x)
        (out.real if out.is_complex() else out).sum().backward()
        leaf.grad = None
        _sync(device)

    once()  # compiles (Triton) and warms up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def kernel_targets(rows: list) -> dict:
    """The BK-Core's two GPU targets, met or not, from the kernels stage's rows."""
    by = {(r["implementation"], r["batch"], r["length"]): r for r in rows}
    lengths = sorted({r["length"] for r in rows})
    short, long = lengths[0], lengths[-1]
    batch = rows[0]["batch"]
    triton_long = by[("triton", batch, long)]["g_elements_per_s"]
    triton_short, attention_short = by[("triton", batch, short)]["ms"], by[("attention_layer", batch, short)]["ms"]
    return {
        f"triton >= {TARGET_G_ELEMENTS:g} G el/s at {batch} x {long}": {"value": triton_long,
                                                                        "met": triton_long >= TARGET_G_ELEMENTS},
        f"triton no slower than attention at {batch} x {short}": {
            "value": f"{triton_short:.3f} ms vs {attention_short:.3f} ms", "met": triton_short <= attention_short},
    }


def training_row(folder: Path, model: str, code) -> dict:
    """A training run's figures from its results file (what it reached when it stopped)."""
    status = "done" if code == 0 else ("stopped at the time budget (resumable)" if code is None else f"failed (exit {code})")
    results = folder / f"{model}_results.json"
    row = {"status": status, "folder": str(folder.relative_to(folder.parents[1]))}
    if results.is_file():
        data = json.loads(results.read_text())
        for key in ("tokens_per_second", "peak_memory_mb", "valid_perplexity", "test_perplexity", "training_time",
                    "steps"):
            if key in data:
                row[key] = data[key]
    else:  # stopped before its results: what its step log recorded (throughput of untraced steps)
        row.update(_partial_figures(folder / f"{model}_steps.csv"))
    return row


def _partial_figures(steps_csv: Path) -> dict:
    if not steps_csv.is_file():
        return {}
    with open(steps_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    rates = [float(r["tokens_per_second"]) for r in rows if r.get("flops_traced") in ("0", "False", "false")]
    figures = {"steps": len(rows), "epochs_started": max((int(r["epoch"]) for r in rows), default=0)}
    if rates:
        figures["tokens_per_second"] = statistics.median(rates)
        figures["tokens_per_second_from"] = "the step log's untraced steps (the run stopped before its results)"
    return figures


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.is_file() else []
    return lines[-1].strip() if lines else ""


def format_readme(evidence: dict) -> str:
    stages = evidence["stages"]
    env = stages.get("environment", {})
    lines = ["# GPU evidence" + (" (dry run: tiny sizes on the CPU, nothing here is a measurement)" if evidence["dry_run"] else ""),
             "", f"Command: `{evidence['command']}`; revision `{evidence['git_revision']}`; started {evidence['started']}; "
             f"budget {evidence['budget_minutes']:g} minutes.", ""]
    if env.get("card"):
        lines += [f"Card: {env['card']}, {env['memory_gib']} GiB; measured copy bandwidth {env['copy_bandwidth_gb_s']} GB/s.", ""]
    lines += ["| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {entry.get('status')} | {entry.get('seconds', '')} |" for name, entry in stages.items()]
    kernels = stages.get("kernels", {})
    if kernels.get("rows"):
        lines += ["", "## BK-Core forward+backward", "",
                  "| implementation | B x N | ms | G elements/s | share of copy bandwidth |", "|---|---|---|---|---|"]
        for r in kernels["rows"]:
            share = f"{r['share_of_bandwidth']:.1%}" if "share_of_bandwidth" in r else ""
            lines.append(f"| {r['implementation']} | {r['batch']} x {r['length']} | {r['ms']:.3f} | "
                         f"{r['g_elements_per_s']:.3f} | {share} |")
        lines.append("")
        for name, target in kernels.get("targets", {}).items():
            value = target["value"] if isinstance(target["value"], str) else f"{target['value']:.3f} G el/s"
            lines.append(f"- {name}: {'met' if target['met'] else 'not met'} ({value})")
    training = stages.get("training", {})
    if training.get("runs"):
        lines += ["", "## The original preset, side by side on one GPU", "",
                  "| model | status | tokens/s | peak memory (MiB) | valid ppl | test ppl |", "|---|---|---|---|---|---|"]
        for model, r in training["runs"].items():
            lines.append(f"| {model} | {r['status']} | {_fmt(r.get('tokens_per_second'), ',.0f')} | "
                         f"{_fmt(r.get('peak_memory_mb'), ',.0f')} | {_fmt(r.get('valid_perplexity'), '.2f')} | "
                         f"{_fmt(r.get('test_perplexity'), '.2f')} |")
    return "\n".join(lines) + "\n"


def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else ""
