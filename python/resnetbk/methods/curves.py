"""Reading a run's validation curve (``valid_curve_interval``): steps, time and tokens to a perplexity.

The methods that claim fewer steps or less data (physics-informed, curriculum, active learning)
are judged on these: the target is the best perplexity the baseline's curve reaches, and the
question is when (if ever) the method's curve gets there.
"""

from __future__ import annotations

from typing import Optional

from .base import AblationRow
from .verdict import Factor, judge


def first_reaching(curve: list, target: float) -> Optional[dict]:
    """The first point of ``curve`` at or below ``target`` perplexity (None if never)."""
    for point in curve:
        if point["perplexity"] <= target:
            return point
    return None


def steps_to_baseline(row: AblationRow) -> Optional[dict]:
    """Where the row's curve reaches the baseline's best curve perplexity, against where the
    baseline first reached it: ``{target, steps, baseline_steps, steps_ratio, time_ratio, ...}``;
    ``reached`` False when it never did (None when either curve is missing)."""
    mine, base = row.valid_curve or [], row.baseline_valid_curve or []
    if not mine or not base:
        return None
    target = min(p["perplexity"] for p in base)
    base_point = first_reaching(base, target)
    point = first_reaching(mine, target)
    figures = {"target_perplexity": target, "baseline_steps": base_point["step"],
               "baseline_train_time": base_point["train_time"], "baseline_tokens": base_point["tokens"],
               "reached": point is not None, "final_perplexity": mine[-1]["perplexity"], "last_step": mine[-1]["step"]}
    if point is not None:
        figures.update(steps=point["step"], train_time=point["train_time"], tokens=point["tokens"],
                       steps_ratio=point["step"] / base_point["step"],
                       time_ratio=point["train_time"] / max(base_point["train_time"], 1e-9),
                       tokens_ratio=point["tokens"] / max(base_point["tokens"], 1))
    return figures


def describe_steps(figures: Optional[dict]) -> str:
    """The steps-to-target figure in words."""
    if figures is None:
        return "no validation curve (set valid_curve_interval)"
    target = f"valid ppl {figures['target_perplexity']:.1f} (the baseline's best, at step {figures['baseline_steps']})"
    if not figures["reached"]:
        return f"never reached {target} in {figures['last_step']} steps (its best: {figures['final_perplexity']:.1f})"
    return (f"reached {target} at step {figures['steps']} ({figures['steps_ratio']:.2f}x the steps, "
            f"{figures['time_ratio']:.2f}x the training time)")


def assess_steps(row: AblationRow, claimed: float) -> tuple:
    """The ablation's ``(own figure, verdict)`` for a claim of ``claimed`` times fewer training
    steps (``methods.verdict``): the factor is the baseline's steps to its best validation
    perplexity over this row's steps to the same perplexity."""
    figures = steps_to_baseline(row)
    own = describe_steps(figures)
    if figures is None:
        return own, "not measured (no validation curve)"
    what = "fewer steps to the baseline's best validation perplexity"
    factor = (Factor(what, 0.0, claimed, note="never reached it") if not figures["reached"] else
              Factor(what, 1.0 / figures["steps_ratio"], claimed))
    return own, judge([factor], row.test_perplexity_change_percent, noise_percent=row.perplexity_noise_percent)


def interpolate(curve: list, key: str, value: float) -> Optional[float]:
    """The curve's perplexity at ``key`` (``tokens``, ``train_time``, ...) = ``value``, linear
    between points; None outside the curve."""
    for a, b in zip(curve, curve[1:]):
        if a[key] <= value <= b[key]:
            if b[key] == a[key]:
                return b["perplexity"]
            t = (value - a[key]) / (b[key] - a[key])
            return a["perplexity"] + t * (b["perplexity"] - a["perplexity"])
    if curve and curve[-1][key] == value:
        return curve[-1]["perplexity"]
    return None
