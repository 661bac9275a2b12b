"""Counts from detections: per-class operating points, calibrated scores, 90% count intervals (numpy only).

A count is the number of boxes at or above its class's operating point. Its interval comes
from the detections' calibrated probabilities: if detection i is a real cell with probability
p_i, independently, the number of real cells among the candidates is Poisson-binomial; the
interval is its central 90% (exact, by convolution; a few hundred candidates cost microseconds).
The calibration maps raw scores to probabilities with the isotonic curve fitted on val.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bloodcell.errors import ConfigError
from bloodcell.types import Detections, find_class

Conf = float | Sequence[float]


def class_thresholds(conf: Conf, num_classes: int) -> np.ndarray:
    """One threshold per class from a number or a per-class sequence."""
    arr = np.asarray(conf, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        return np.full(num_classes, float(arr[0]))
    if arr.size != num_classes:
        raise ValueError(f"{arr.size} thresholds given for {num_classes} classes")
    return arr


def conf_override(thresholds: tuple[float, ...] | None, own: Conf, num_classes: int) -> tuple[float, ...] | None:
    """--conf's thresholds when they differ from the model's own operating points ``own``; None when absent or
    only restating them (outputs then name no override)."""
    if thresholds is None:
        return None
    same = (class_thresholds(thresholds, num_classes) == class_thresholds(own, num_classes)).all()
    return None if same else thresholds


def per_class(class_names: Sequence[str], values: Conf) -> str:
    """'RBC 0.64, WBC 0.56, Platelets 0.63': one number or one per class, as messages show them."""
    thresholds = class_thresholds(values, len(class_names))
    return ", ".join(f"{n} {t:.2f}" for n, t in zip(class_names, thresholds, strict=True))


def above(dets: Detections, conf: Conf, num_classes: int) -> Detections:
    """The detections at or above their class's threshold."""
    thr = class_thresholds(conf, num_classes)
    return dets[dets.scores >= thr[dets.labels]] if len(dets) else dets


class ConfigValueError(ConfigError, ValueError):
    """A bad --conf: a ConfigError for the CLI, a ValueError for argparse type checks."""


def parse_conf(text: str, class_names: Sequence[str], default: Conf, flag: str = "--conf") -> tuple[float, ...]:
    """``0.4`` (every class) or ``RBC=0.4,WBC=0.5`` (others keep ``default``) -> per-class values in
    (0, 1]: operating points, or NMS IoU thresholds (``flag`` names the option in errors).

    Raises ConfigError (a ValueError too) naming the faulty part."""
    base = [float(v) for v in class_thresholds(default, len(class_names))]
    text = text.strip()
    if "=" not in text:
        if "," in text:  # "0.5,0.6": a list by position is not taken (which class is which?)
            if re.fullmatch(r"\d+,\d+", text):
                raise ConfigValueError(f"{flag} {text!r}: write decimals with a point ({text.replace(',', '.')})")
            example = ",".join(f"{name}=0.{4 + i}" for i, name in enumerate(class_names[:2]))
            raise ConfigValueError(
                f"{flag} {text!r}: a list by position is not read; give one value that every class takes, or "
                f"CLASS=VALUE per class (e.g. {example})"
            )
        values = [parse_threshold(text, flag)] * len(class_names)
        return tuple(values)
    seen: set[int] = set()
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise ConfigValueError(f"{flag} {text!r}: {part.strip()!r} is not CLASS=VALUE")
        index = find_class(name, tuple(class_names))  # "platelet", "wbc": as the VOC reader takes them
        if index is None:
            raise ConfigValueError(f"{flag} {text!r}: unknown class {name.strip()!r}; classes: {list(class_names)}")
        if index in seen:
            raise ConfigValueError(f"{flag} {text!r}: {class_names[index]} is given twice")
        seen.add(index)
        base[index] = parse_threshold(value, f"{flag} {name.strip()}")
    return tuple(base)


def resolve_conf(
    conf: Conf | Mapping[str, float] | str | None, class_names: Sequence[str], default: Conf, name: str = "conf"
) -> tuple[float, ...]:
    """The Python API's operating points, per class: None (``default``), one number, one per class in
    ``class_names`` order, ``{"RBC": 0.4}`` (others keep ``default``) or the CLI's text; each in (0, 1].
    ConfigError (a ValueError too) naming ``name`` and what is wrong."""
    values = [float(v) for v in class_thresholds(default, len(class_names))]
    if conf is None:
        pass
    elif isinstance(conf, str):
        return parse_conf(conf, class_names, default, name)
    elif isinstance(conf, Mapping):
        for key, value in conf.items():
            index = find_class(str(key), tuple(class_names))
            if index is None:
                raise ConfigValueError(f"{name}: unknown class {key!r}; classes: {list(class_names)}")
            if not is_real(value):
                raise ConfigValueError(f"{name}[{key!r}] = {value!r}: expected a number in (0, 1]")
            values[index] = float(value)
    elif is_real(conf) or (isinstance(conf, (Sequence, np.ndarray)) and all(is_real(v) for v in conf)):
        try:
            values = [float(v) for v in class_thresholds(conf, len(class_names))]
        except ValueError as e:
            raise ConfigValueError(
                f"{name}={conf!r}: {e}; give one number or one per class {list(class_names)}"
            ) from None
    else:
        raise ConfigValueError(
            f"{name}={conf!r}: give one number, one per class {list(class_names)}, or a dict of class to number"
        )
    for value in values:
        if not 0.0 < value <= 1.0:  # also refuses nan
            raise ConfigValueError(f"{name}={conf!r}: expected values in (0, 1]")
    return tuple(values)


def is_real(value: object) -> bool:
    """A number (numpy's too), not a bool: ``conf=True`` is a mistake, not 1.0."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def parse_nms_iou(text: str, class_names: Sequence[str], default: float | Sequence[float]) -> float | tuple[float, ...]:
    """``--nms-iou`` as ``parse_conf`` reads it, kept as one number when every class gets the same one
    (a per-class list needs a newer file format, which older runtimes refuse)."""
    values = parse_conf(text, class_names, default, "--nms-iou")  # type: ignore[arg-type]
    return values[0] if len(set(values)) == 1 else values


def parse_threshold(text: str, flag: str) -> float:
    """One value in (0, 1] (an operating point, an IoU, a score), or a ConfigError naming ``flag``."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigValueError(f"{flag} {text.strip()!r}: not a number") from None
    if not 0.0 < value <= 1.0:  # also refuses nan
        raise ConfigValueError(f"{flag} {text.strip()}: expected a value in (0, 1]")
    return value


@dataclass(frozen=True)
class Calibration:
    """Per class, a monotone piecewise-linear map from raw score to P(real cell); ``floor``: lowest
    score that enters an interval (below it, candidates are noise the fit never saw).

    ``width``: per class, a factor on the interval's half-widths around the expected count, fitted on
    val by split-conformal prediction (``fit_interval_width``). The Poisson-binomial alone assumes
    independent candidates and no cell without a candidate; real counts spread more. Absent: 1.
    """

    knots: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]
    floor: float = 0.05
    level: float = 0.9
    width: dict[str, float] = field(default_factory=dict)

    def probabilities(self, name: str, scores: np.ndarray) -> np.ndarray:
        xs, ys = self.knots[name]
        return np.interp(scores, xs, ys).astype(np.float64)

    def plain_interval(self, name: str, scores: np.ndarray) -> tuple[float, int, int]:
        """Expected number of real cells among ``scores`` (those >= floor) and its Poisson-binomial
        ``level`` interval, before the conformal width."""
        probs = self.probabilities(name, scores[scores >= self.floor])
        lo, hi = central_interval(poisson_binomial(probs), self.level)
        return float(probs.sum()), lo, hi

    def to_dict(self) -> dict:
        return {
            "floor": self.floor,
            "level": self.level,
            "knots": {k: {"score": list(x), "prob": list(y)} for k, (x, y) in self.knots.items()},
            "width": dict(self.width),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        knots = {k: (tuple(map(float, v["score"])), tuple(map(float, v["prob"]))) for k, v in d["knots"].items()}
        width = {k: float(v) for k, v in d.get("width", {}).items()}
        return cls(knots, float(d.get("floor", 0.05)), float(d.get("level", 0.9)), width)


def poisson_binomial(probs: np.ndarray) -> np.ndarray:
    """P(X = k) for k = 0..n, X the number of successes among independent Bernoulli(p_i)."""
    pmf = np.zeros(len(probs) + 1)
    pmf[0] = 1.0
    for i, p in enumerate(np.clip(probs, 0.0, 1.0)):
        pmf[1 : i + 2] = pmf[1 : i + 2] * (1 - p) + pmf[: i + 1] * p
        pmf[0] *= 1 - p
    return pmf


def central_interval(pmf: np.ndarray, level: float = 0.9) -> tuple[int, int]:
    """Smallest k_lo with P(X <= k_lo) > (1-level)/2 and k_hi with P(X <= k_hi) >= 1-(1-level)/2."""
    cdf = np.cumsum(pmf)
    tail = (1.0 - level) / 2
    lo = int(np.searchsorted(cdf, tail, side="right"))
    hi = int(np.searchsorted(cdf, 1.0 - tail - 1e-12, side="left"))
    return lo, min(hi, len(pmf) - 1)


def count_intervals(
    dets: Detections,
    class_names: Sequence[str],
    calibration: Calibration | None,
    counts: dict[str, int] | None = None,
) -> dict[str, tuple[int, int]] | None:
    """Per class, the ``calibration.level`` interval of the number of real cells; None without calibration.

    With ``counts`` (the counts reported beside it), each interval is stretched to hold its count, so
    a user never sees a count outside its own interval (coverage is measured with the same rule)."""
    if calibration is None:
        return None
    out = {}
    for c, name in enumerate(class_names):
        if name not in calibration.knots:
            return None
        mean, lo, hi = calibration.plain_interval(name, dets.scores[dets.labels == c])
        k = calibration.width.get(name)
        if k is not None:
            half_lo, half_hi = half_widths(mean, lo, hi)
            # the integers within k half-widths of the mean (never empty: the nearest one at least)
            nearest = round(mean)
            lo = max(0, min(math.ceil(mean - k * half_lo - 1e-9), nearest))
            hi = max(math.floor(mean + k * half_hi + 1e-9), nearest)
        if counts is not None:
            lo, hi = min(lo, counts[name]), max(hi, counts[name])
        out[name] = (lo, hi)
    return out


def half_widths(mean: float, lo: int, hi: int) -> tuple[float, float]:
    """Distances from the expected count to the interval's ends, at least half a cell each."""
    return max(mean - lo, 0.5), max(hi - mean, 0.5)


def conformal_min_images(level: float = 0.9) -> int:
    """Fewest val images whose split-conformal ``level`` quantile exists, ceil(level (n+1)) <= n: 9 at
    90%. With fewer, ``fit_interval_width`` can only take the widest residual, which covers about n/(n+1)
    of new images (4 images: 80%, and a draw's spread is wide: `python benchmarks/small_val.py`)."""
    if not 0 < level < 1:
        raise ValueError(f"level {level}: a coverage in (0, 1)")
    n = 1
    while math.ceil(round(level * (n + 1), 9)) > n:
        n += 1
    return n


def fit_interval_width(residuals: Sequence[tuple[float, int, int, int]], level: float = 0.9) -> float:
    """Split-conformal factor on the half-widths: ``residuals`` holds (expected count, interval
    low, high, true count) per val image; the result is the finite-sample ``level`` quantile of
    |true - expected| / half-width on the side of the truth, so that about ``level`` of new
    images from the same distribution fall inside (Vovk et al.; Lei et al. 2018)."""
    if not residuals:
        return 1.0
    ratios = []
    for mean, lo, hi, true in residuals:
        half_lo, half_hi = half_widths(mean, lo, hi)
        ratios.append(abs(true - mean) / (half_lo if true < mean else half_hi))
    n = len(ratios)
    q = min(1.0, level * (n + 1) / n)
    return float(np.quantile(ratios, q, method="higher"))


def fit_isotonic(scores: np.ndarray, hits: np.ndarray, max_knots: int = 24) -> tuple[tuple[float, ...], ...]:
    """Pool-adjacent-violators fit of P(hit | score), thinned to at most ``max_knots`` knots.

    Hand-written (20 lines) rather than pulling scikit-learn into the torch-free runtime for it.
    """
    order = np.argsort(scores, kind="stable")
    x, y = np.asarray(scores, np.float64)[order], np.asarray(hits, np.float64)[order]
    if len(x) == 0:
        return (0.0, 1.0), (0.0, 1.0)
    vals, wts, xs = [], [], []  # blocks: mean, weight, mean score
    for xi, yi in zip(x, y, strict=True):
        vals.append(yi), wts.append(1.0), xs.append(xi)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = wts[-2] + wts[-1]
            vals[-2] = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w
            xs[-2] = (xs[-2] * wts[-2] + xs[-1] * wts[-1]) / w
            wts[-2] = w
            del vals[-1], wts[-1], xs[-1]
    kx, ky = np.asarray(xs), np.asarray(vals)
    if len(kx) > max_knots:
        pick = np.unique(np.round(np.linspace(0, len(kx) - 1, max_knots)).astype(int))
        kx, ky = kx[pick], ky[pick]
    kx = np.concatenate([[0.0], kx, [1.0]])  # flat beyond the data at both ends
    ky = np.concatenate([[ky[0]], ky, [ky[-1]]])
    kx, idx = np.unique(kx, return_index=True)
    return tuple(float(v) for v in kx), tuple(float(v) for v in np.maximum.accumulate(ky[idx]))
