"""Numbers with their spread: a group of seeds summarised, and two groups compared (scipy.stats).

A group's accuracies are independent runs of one setting; their mean carries a 95% confidence
interval from Student's t, and a claim "the mean is above ACC" is judged by the one-sided one-sample
t-test, as speedrun records are. Two groups are compared by Welch's t-test (no equal variances
assumed) with the interval of the difference of their means. scipy is imported when a number is
asked for, never at start-up.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

CONFIDENCE = 0.95
SIGNIFICANCE = 0.05  # a difference is "shown" below this p-value


def _finite(value: float) -> float | None:
    """A statistic as JSON carries it: None where it is undefined (NaN: one seed, no spread)."""
    return float(value) if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class Summary:
    """One group's accuracies (percent): mean, sample standard deviation, the t interval of the mean, and
    against a ``target`` how many seeds reached it and the one-sided p-value that the mean is above it."""

    n: int
    mean: float
    std: float | None                   # sample (n - 1); None for one seed, 0 for seeds all alike
    ci95: tuple[float, float] | None    # of the mean (Student's t); None for one seed or no spread
    min: float
    max: float
    seconds_mean: float | None = None
    target: float | None = None
    reached: int | None = None          # seeds at or above ``target``
    p_value: float | None = None        # H1: mean > target (one-sided one-sample t-test)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["ci95"] = list(self.ci95) if self.ci95 is not None else None
        return values

    def describe(self) -> str:
        """``n=3: 45.07% ± 0.41 (mean ± std), 95% CI 44.05-46.09, min 44.61%, max 45.40%``"""
        if self.n == 1:
            return f"n=1: {self.mean:.2f}% (one seed: no spread; give --seeds 3 or more to compare)"
        if self.ci95 is None:
            return (f"n={self.n}: {self.mean:.2f}%, every seed alike: no spread, so no interval and no test (a "
                    "spread of 0 says the seeds did not vary, not that the mean is certain)")
        assert self.std is not None
        return (f"n={self.n}: {self.mean:.2f}% ± {self.std:.2f} (mean ± std), 95% CI {self.ci95[0]:.2f}-"
                f"{self.ci95[1]:.2f}, min {self.min:.2f}%, max {self.max:.2f}%")

    def describe_target(self) -> str:
        """``2 of 3 seeds reached 45.00%; mean above it: p = 0.041 (one-sided t-test)``"""
        assert self.target is not None
        if self.p_value is not None:
            test = f"; mean above it: p = {self.p_value:.3g} (one-sided t-test)"
        else:
            test = "; one seed cannot test the mean" if self.n == 1 else "; no spread: no test of the mean"
        return f"{self.reached} of {self.n} seeds reached {self.target:.2f}%{test}"


def summarize(accuracies: Sequence[float], seconds: Sequence[float] | None = None,
              target: float | None = None) -> Summary:
    """Summarise one group's accuracies (and its seeds' seconds). Usage: ``summarize([45.1, 44.6, 45.4]).ci95``"""
    import numpy as np
    from scipy import stats

    values = np.asarray(accuracies, dtype=np.float64)
    n = len(values)
    if n == 0:
        raise ValueError("a group with no finished seed has nothing to summarise")
    mean = float(values.mean())
    std = ci95 = p_value = None
    if n >= 2:
        std = float(values.std(ddof=1))
        if std > 0:  # no spread (every seed alike): no interval and no test, rather than a certainty from nothing
            sem = float(stats.sem(values))
            low, high = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=sem)
            ci95 = (float(low), float(high))
            if target is not None:
                p_value = _finite(stats.ttest_1samp(values, target, alternative="greater").pvalue)
    reached = int((values >= target).sum()) if target is not None else None
    seconds_mean = float(np.mean(seconds)) if seconds is not None and len(seconds) else None
    return Summary(n, mean, std, ci95, float(values.min()), float(values.max()), seconds_mean, target, reached,
                   p_value)


@dataclass(frozen=True)
class Comparison:
    """B against A: ``difference`` = mean(B) - mean(A) in points, its 95% interval and Welch's two-sided
    p-value (None where a group has one seed), the ratio of their mean times, and a sentence."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    difference: float
    ci95: tuple[float, float] | None
    p_value: float | None
    time_ratio: float | None            # mean seconds of B over A's
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["ci95"] = list(self.ci95) if self.ci95 is not None else None
        return values


def compare(a: Sequence[float], b: Sequence[float], seconds_a: Sequence[float] | None = None,
            seconds_b: Sequence[float] | None = None) -> Comparison:
    """Compare group B's accuracies with group A's (Welch's t-test). Usage: ``compare([90.1, 90.3], [90.6, 90.9])``"""
    import numpy as np
    from scipy import stats

    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(xa) == 0 or len(xb) == 0:
        raise ValueError("each group needs at least one finished seed to compare")
    difference = float(xb.mean() - xa.mean())
    ci95 = p_value = None
    if len(xa) >= 2 and len(xb) >= 2 and (xa.std() > 0 or xb.std() > 0):
        test = stats.ttest_ind(xb, xa, equal_var=False)
        p_value = _finite(test.pvalue)
        interval = test.confidence_interval(CONFIDENCE)
        if math.isfinite(interval.low) and math.isfinite(interval.high):
            ci95 = (float(interval.low), float(interval.high))
    ratio = None
    if seconds_a is not None and seconds_b is not None and len(seconds_a) and len(seconds_b):
        ratio = float(np.mean(seconds_b) / np.mean(seconds_a)) if np.mean(seconds_a) > 0 else None
    return Comparison(len(xa), len(xb), float(xa.mean()), float(xb.mean()), difference, ci95, p_value, ratio,
                      _sentence(difference, p_value, len(xa), len(xb)))


def _sentence(difference: float, p_value: float | None, n_a: int, n_b: int) -> str:
    sizes = f"n={n_a}" if n_a == n_b else f"n={n_a} and n={n_b}"
    if p_value is None and min(n_a, n_b) == 1:
        return (f"no difference can be shown at {sizes}: a group of one seed has no spread (give each --seeds 3 "
                "or more)")
    if p_value is None:
        return (f"no difference can be tested at {sizes} (B - A = {difference:+.2f} points): neither group's seeds "
                "vary, so there is no spread to test it against")
    if p_value < SIGNIFICANCE and difference != 0:
        better = "better" if difference > 0 else "worse"
        return f"B is {better} by {abs(difference):.2f} points, p = {p_value:.3g}"
    return f"no difference shown at {sizes} (B - A = {difference:+.2f} points, p = {p_value:.3g})"
