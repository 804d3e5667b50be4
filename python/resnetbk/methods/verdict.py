"""The ablation's one verdict rule, the same for every method of the original benchmark.

A method's ``assess`` measures the factors its claim names, each as "how many times better"
(``Factor``: a speed-up, a size ratio, fewer steps as baseline steps over the method's), and any
condition the claim presupposes (``Condition``: ACT's depth must vary between tokens). ``judge``
turns them into the verdict:

* **held** when every factor reaches ``TOLERANCE`` (90%) of the claimed one, every condition is
  met, and the row's test perplexity is no worse than the baseline's by more than the allowed
  margin: two standard deviations of the seed noise where the ablation measured it, else
  ``PERPLEXITY_MARGIN_PERCENT`` (2%), whichever is larger;
* **not borne out** otherwise, naming each part that failed with its numbers;
* **not measured** when a factor has no measurement.

So a size or speed claim cannot print "held" at +40% perplexity, and no method gets a looser
tolerance than another. (Spectral z, this package's own method, claims a quality gain rather
than a saving; its verdict keeps its own two conditions: ``methods.spectral_z``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

#: The share of the claimed factor a measurement must reach.
TOLERANCE = 0.9
#: The perplexity margin without a measured seed noise (percent of the baseline's test perplexity).
PERPLEXITY_MARGIN_PERCENT = 2.0


@dataclass(frozen=True)
class Factor:
    """A measured factor against the claimed one, both "times better" (higher is better)."""

    what: str
    measured: Optional[float]
    claimed: float
    #: Why there is no usable number, when ``measured`` is 0 for a reason (e.g. "never reached").
    note: str = ""

    @property
    def measured_ok(self) -> bool:
        return self.measured is not None and math.isfinite(self.measured)

    @property
    def reached(self) -> bool:
        return self.measured_ok and self.measured >= TOLERANCE * self.claimed

    def words(self) -> str:
        if self.note:
            return f"{self.what}: {self.note} (claimed {self.claimed:.3g}x)"
        return f"{self.what} {self.measured:.2f}x (claimed {self.claimed:.3g}x, needs {TOLERANCE * self.claimed:.2f}x)"


@dataclass(frozen=True)
class Condition:
    """A requirement the claim presupposes, met or not, in words."""

    what: str
    met: bool


def perplexity_margin(noise_percent: Optional[float] = None) -> float:
    """The allowed test-perplexity increase in percent: 2 seed standard deviations or 2%."""
    if noise_percent is None or not math.isfinite(noise_percent):
        return PERPLEXITY_MARGIN_PERCENT
    return max(PERPLEXITY_MARGIN_PERCENT, 2.0 * noise_percent)


class Verdict(str):
    """The verdict's words, with what decided it: ``held``, and ``saving_delivered`` (every
    factor reached and every condition met: if it did not hold, only the perplexity failed)."""

    held: bool = False
    saving_delivered: bool = False

    def __new__(cls, words: str, *, held: bool = False, saving_delivered: bool = False):
        verdict = super().__new__(cls, words)
        verdict.held, verdict.saving_delivered = held, saving_delivered
        return verdict


def judge(factors: list, test_change_percent: float, *, conditions: tuple = (),
          noise_percent: Optional[float] = None) -> Verdict:
    """The verdict in words (see the module's documentation)."""
    missing = [f.what for f in factors if not f.measured_ok]
    if not math.isfinite(test_change_percent):
        missing.append("the test perplexity")
    if not factors or missing:
        return Verdict("not measured: " + (", ".join(missing) or "no factor"))
    margin = perplexity_margin(noise_percent)
    quality_ok = math.isfinite(test_change_percent) and test_change_percent <= margin
    quality = (f"test perplexity {test_change_percent:+.1f}% ({'within' if quality_ok else 'more than'} the "
               f"allowed +{margin:.1f}%)")
    failed = [f.words() for f in factors if not f.reached] + [c.what for c in conditions if not c.met]
    if not failed and quality_ok:
        return Verdict("held: " + "; ".join([f.words() for f in factors] + [c.what for c in conditions] + [quality]),
                       held=True, saving_delivered=True)
    return Verdict("not borne out: " + "; ".join(failed + ([] if quality_ok else [quality])),
                   saving_delivered=not failed)
