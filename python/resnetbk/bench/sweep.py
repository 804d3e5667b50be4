"""``python -m resnetbk.bench sweep``: one method's hyper-parameter chosen on validation data.

``--method use_act --values ponder_weight=0.001,0.01,0.1`` trains the ablation's ResNet-BK
baseline and the method once per value, with the same data, budget and seed (``--preset epoch``:
one full pass with the original model and optimizer), and reads each run as an ablation row
(``bench.ablation``). The choice uses the validation split only: each value's verdict
(``methods.verdict``) is computed with the validation perplexity in place of the test one, and
the chosen value is the one with the lowest validation perplexity among those whose claim holds
on validation; where none holds, among those that deliver the claimed saving (only their
perplexity fails); else the lowest validation perplexity of all. Test perplexities are reported
beside, never used.

Writes ``sweep.json`` and ``sweep.md`` into ``--output-dir`` (default
``benchmark_results/sweep``), each run's results under ``runs/``; ``--resume`` keeps every
finished run and continues an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import math
import sys
from dataclasses import fields, replace
from pathlib import Path

from .. import methods
from ..jsonfile import write_json_atomic
from .ablation import BASELINE, ablation_configs, measured_row, run_rows, time_bk_op
from .options import build_base_config, parse_args
from .runner import WikiText2Benchmark


def parse_values(method, text: str) -> tuple:
    """``NAME=V1,V2,...`` -> ``(name, [values])``, each value of the setting's declared type."""
    name, sep, listed = (text or "").partition("=")
    name = name.strip()
    declared = {f.name: f for f in fields(method.Settings)}
    if not sep or name not in declared or name == "enabled":
        raise ValueError(f"--values: expected NAME=V1,V2,... with NAME one of {', '.join(method.hyperparameters)} "
                         f"(the settings of {method.flag}), got {text!r}")
    kind = type(method.hyperparameters[name])
    values = []
    for item in (v.strip() for v in listed.split(",")):
        if not item:
            continue
        try:
            values.append({"True": True, "False": False}[item] if kind is bool else kind(item))
        except (KeyError, ValueError):
            raise ValueError(f"--values: {name} takes {kind.__name__} values, got {item!r}") from None
    if not values:
        raise ValueError(f"--values: no value given for {name}")
    return name, values


def sweep_configs(base, method, name: str, values: list) -> list:
    """``(row name, config)``: the ablation's baseline, then the method with each value."""
    (_, baseline), = ablation_configs(base, only=[method.flag])[:1]
    rows = [(BASELINE, baseline)]
    for value in values:
        settings = replace(baseline.methods[method.flag], enabled=True, **{name: value})
        config = baseline.replace(model_name=f"sweep_{method.flag}_{name}_{value}",
                                  methods={**baseline.methods, method.flag: settings})
        methods.validate(config)
        rows.append((f"{name}={value}", config))
    return rows


def choose(rows: list) -> dict:
    """The chosen row (see the module's documentation) among the method's rows."""
    holding = [r for r in rows if r["verdict_on_validation"].startswith("held")]
    delivering = [r for r in rows if r.get("saving_delivered")]
    if holding:
        pool, rule = holding, "the lowest validation perplexity among the values whose claim holds on validation"
    elif delivering:
        pool, rule = delivering, ("no value holds its claim on validation: the lowest validation perplexity among "
                                  "the values that deliver the claimed saving (only their perplexity fails)")
    else:
        pool, rule = rows, "no value holds or delivers its claimed saving on validation: the lowest validation perplexity"
    best = min(pool, key=lambda r: r["valid_perplexity"] if math.isfinite(r["valid_perplexity"]) else math.inf)
    return {"value": best["value"], "row": best["row"], "rule": rule}


def format_markdown(doc: dict) -> str:
    lines = [f"# Sweep of {doc['method']}.{doc['setting']}\n", doc["context"], "",
             f"Chosen: **{doc['setting']} = {doc['chosen']['value']}** ({doc['chosen']['rule']}).", "",
             "| value | valid ppl (change) | test ppl (change) | tokens/s ratio | own figure | verdict on validation |",
             "|---|---|---|---|---|---|"]
    base = doc["baseline"]
    lines.append(f"| baseline | {base['valid_perplexity']:.2f} | {base['test_perplexity']:.2f} | 1.00x | - | reference |")
    for r in doc["rows"]:
        lines.append(f"| {r['value']} | {r['valid_perplexity']:.2f} ({r['valid_perplexity_change_percent']:+.1f}%) | "
                     f"{r['test_perplexity']:.2f} ({r['test_perplexity_change_percent']:+.1f}%) | "
                     f"{r['tokens_per_second_ratio']:.2f}x | {r['own_figure']} | {r['verdict_on_validation']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    method_flag, values_text = _pop_option(argv, "--method"), _pop_option(argv, "--values")
    args = parse_args(argv, prog="python -m resnetbk.bench sweep", default_output="benchmark_results/sweep",
                      description=__doc__, models=False)
    try:
        if method_flag not in methods.BY_FLAG:
            raise ValueError(f"--method: expected one of {', '.join(methods.FLAGS)}, got {method_flag!r}")
        method = methods.BY_FLAG[method_flag]
        name, values = parse_values(method, values_text)
        rows = sweep_configs(build_base_config(args), method, name, values)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = run_rows(WikiText2Benchmark(args.output_dir, resume=args.resume, quiet=args.quiet), rows, "sweep")
    if isinstance(results, int):
        return results
    bk_op = time_bk_op(rows[0][1])
    base = results[BASELINE]
    table = []
    for (row, _), value in zip(rows[1:], values):
        measured = measured_row(method.flag, results[row], base, bk_op)
        own, verdict = method.assess(measured)
        on_valid = method.assess(replace(measured, test_perplexity_change_percent=measured.valid_perplexity_change_percent))[1]
        delivered = bool(getattr(on_valid, "saving_delivered", False))
        on_valid = on_valid.replace("test perplexity", "validation perplexity")  # what it was computed from
        table.append({"row": row, "value": value, "valid_perplexity": measured.valid_perplexity,
                      "valid_perplexity_change_percent": measured.valid_perplexity_change_percent,
                      "test_perplexity": measured.test_perplexity,
                      "test_perplexity_change_percent": measured.test_perplexity_change_percent,
                      "tokens_per_second_ratio": measured.tokens_per_second_ratio, "own_figure": own,
                      "verdict_on_validation": on_valid, "saving_delivered": delivered, "verdict_on_test": verdict,
                      "figures": measured.figures})
    context = (f"Preset `{args.preset}`, seed {rows[0][1].seed}, {len(values)} values; git {base.git_revision}. "
               "Chosen on the validation split; test perplexities are reported, not used.")
    doc = {"method": method.flag, "setting": name, "values": values, "context": context, "preset": args.preset,
           "chosen": choose(table), "rows": table,
           "baseline": {"valid_perplexity": base.valid_perplexity, "test_perplexity": base.test_perplexity},
           "config": rows[0][1].to_dict(), "versions": base.versions, "git_revision": base.git_revision}
    out = Path(args.output_dir)
    write_json_atomic(out / "sweep.json", doc)
    (out / "sweep.md").write_text(format_markdown(doc))
    print(format_markdown(doc))
    return 0


def _pop_option(argv: list, option: str):
    """Remove ``option VALUE`` (or ``option=VALUE``) from ``argv`` and return VALUE (None if absent)."""
    for i, item in enumerate(argv):
        if item == option and i + 1 < len(argv):
            del argv[i]
            return argv.pop(i)
        if item.startswith(option + "="):
            return argv.pop(i).split("=", 1)[1]
    return None
