"""Per-class operating points, --conf parsing, isotonic calibration and Poisson-binomial intervals."""

import itertools
import re

import numpy as np
import pytest

from bloodcell.errors import ConfigError
from bloodcell.runtime.counting import (
    Calibration,
    above,
    central_interval,
    class_thresholds,
    count_intervals,
    fit_isotonic,
    parse_conf,
    poisson_binomial,
)
from bloodcell.types import Detections

NAMES = ("RBC", "WBC", "Platelets")


def test_poisson_binomial_matches_enumeration():
    p = np.array([0.9, 0.2, 0.5, 0.7])
    brute = np.zeros(5)
    for bits in itertools.product([0, 1], repeat=4):
        brute[sum(bits)] += np.prod([pi if b else 1 - pi for pi, b in zip(p, bits, strict=True)])
    assert np.allclose(poisson_binomial(p), brute)
    assert poisson_binomial(np.zeros(0)).tolist() == [1.0]


def test_central_interval_of_a_certain_count_is_that_count():
    assert central_interval(poisson_binomial(np.ones(7))) == (7, 7)
    lo, hi = central_interval(poisson_binomial(np.full(40, 0.5)))
    assert lo < 20 < hi and hi - lo <= 12


def test_intervals_cover_about_ninety_percent_when_probabilities_are_right():
    """Simulated fields: each candidate is a real cell with its (known) probability."""
    rng = np.random.default_rng(0)
    cal = Calibration({n: ((0.0, 1.0), (0.0, 1.0)) for n in NAMES}, floor=0.0)  # score == probability
    hits = []
    for _ in range(400):
        scores = rng.uniform(0.0, 1.0, 30)
        truth = int((rng.uniform(size=30) < scores).sum())
        dets = Detections(np.zeros((30, 4)), np.zeros(30, np.int64), scores)
        lo, hi = count_intervals(dets, NAMES, cal)["RBC"]
        hits.append(lo <= truth <= hi)
    assert 0.86 <= np.mean(hits) <= 0.96


def test_isotonic_fit_is_monotone_and_pools_violators():
    xs, ys = fit_isotonic(np.array([0.1, 0.2, 0.3, 0.4, 0.9]), np.array([0, 1, 0, 1, 1.0]))
    assert list(xs) == sorted(xs) and list(ys) == sorted(ys)
    assert xs[0] == 0.0 and xs[-1] == 1.0
    cal = Calibration({"RBC": (xs, ys)})
    assert cal.probabilities("RBC", np.array([0.25]))[0] == pytest.approx(0.5)  # 0.2 and 0.3 pooled
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_per_class_thresholds_select_per_class():
    dets = Detections(np.zeros((4, 4)), [0, 0, 1, 2], [0.5, 0.3, 0.5, 0.5])
    assert len(above(dets, 0.4, 3)) == 3
    assert above(dets, (0.2, 0.6, 0.4), 3).labels.tolist() == [0, 0, 2]
    with pytest.raises(ValueError, match="2 thresholds"):
        class_thresholds((0.1, 0.2), 3)


def test_parse_conf_forms_and_errors():
    assert parse_conf("0.4", NAMES, 0.5) == (0.4, 0.4, 0.4)
    assert parse_conf("RBC=0.3,platelets=0.6", NAMES, (0.5, 0.45, 0.5)) == (0.3, 0.45, 0.6)
    for bad, message in [
        ("2", "(0, 1]"),
        ("nan", "(0, 1]"),
        ("-1", "(0, 1]"),
        ("x", "not a number"),
        ("NK=0.3", "unknown class 'NK'; classes: ['RBC', 'WBC', 'Platelets']"),
        ("RBC=0.6,WBC", "'WBC' is not CLASS=VALUE"),
        ("RBC=0.6,rbc=0.1", "RBC is given twice"),
        ("RBC=1.5", "(0, 1]"),
        ("RBC", "not a number"),
        (
            "0.5,0.6",
            "a list by position is not read; give one value that every class takes, or CLASS=VALUE per class "
            "(e.g. RBC=0.4,WBC=0.5)",
        ),
        ("0,5", "write decimals with a point (0.5)"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_conf(bad, NAMES, 0.5)


def test_conformal_width_restores_coverage_when_counts_spread_more_than_the_scores_say():
    """Truth = expected count + extra noise the scores do not know about (correlated misses):
    plain Poisson-binomial intervals under-cover; the width fitted on one half covers ~90% of the other."""
    from bloodcell.runtime.counting import fit_interval_width

    rng = np.random.default_rng(1)
    fields = []
    for _ in range(600):
        scores = rng.uniform(0.5, 1.0, 25)
        truth = int((rng.uniform(size=25) < scores).sum() + rng.normal(0, 3))
        fields.append((Detections(np.zeros((25, 4)), np.zeros(25, np.int64), scores), truth))
    plain = Calibration({n: ((0.0, 1.0), (0.0, 1.0)) for n in NAMES}, floor=0.0)

    def coverage(cal, items):
        return np.mean([lo <= t <= hi for d, t in items for lo, hi in [count_intervals(d, NAMES, cal)["RBC"]]])

    fit, test = fields[:300], fields[300:]
    residuals = []
    for d, t in fit:
        lo, hi = count_intervals(d, NAMES, plain)["RBC"]
        residuals.append((float(d.scores.sum()), lo, hi, t))
    k = fit_interval_width(residuals)
    widened = Calibration(plain.knots, floor=0.0, width={"RBC": k})
    assert coverage(plain, test) < 0.8 and k > 1
    assert 0.85 <= coverage(widened, test) <= 0.95
