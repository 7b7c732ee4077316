"""The ECE of a confidence and its chance level (``evaluate/reliability.py``)."""

import numpy as np
import pytest
from scipy.stats import binom

from harmonixr.evaluate.metrics import confidence_ece, expected_calibration_error
from harmonixr.evaluate.reliability import ece_by_chance


def test_confidence_ece_by_hand():
    # bins of width 0.1: 0.95 and 0.92 share bin 9 (accuracy 1/2, confidence 0.935); 0.35 is
    # alone in bin 3 (accuracy 1, confidence 0.35): (2·0.435 + 1·0.65) / 3
    conf = np.array([0.95, 0.92, 0.35])
    right = np.array([True, False, True])
    assert confidence_ece(conf, right) == pytest.approx((2 * 0.435 + 0.65) / 3)
    # weights count rows: the third row twice
    assert confidence_ece(conf, right, weights=np.array([1, 1, 2])) == pytest.approx(
        (2 * 0.435 + 2 * 0.65) / 4
    )
    # the top-label ECE of a table is that of its rows' maxima
    probs = np.array([[0.95, 0.05], [0.08, 0.92], [0.35, 0.33]])
    labels = np.array([0, 0, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx((2 * 0.435 + 0.65) / 3)


def test_ece_by_chance_of_sure_answers_is_zero():
    got = ece_by_chance(np.ones(50), np.ones(50, bool), draws=50)
    assert got.measured == 0.0 and got.expected == 0.0 and got.p_value == 1.0


def test_ece_by_chance_matches_the_binomial_at_one_confidence():
    # every confidence 0.5 falls in one bin: the ECE is |k/n − 0.5| with k ~ Binomial(n, 0.5)
    n = 40
    k = np.arange(n + 1)
    expected = float(np.sum(binom.pmf(k, n, 0.5) * np.abs(k / n - 0.5)))
    got = ece_by_chance(np.full(n, 0.5), np.arange(n) < n // 2, draws=4000, seed=1)
    assert got.expected == pytest.approx(expected, abs=0.004)
    assert got.measured == 0.0 and got.p_value == 1.0


def test_ece_by_chance_flags_overconfidence():
    rng = np.random.default_rng(0)
    conf = np.full(400, 0.9)
    right = rng.random(400) < 0.6  # right 60 % of the time, sure 90 %
    got = ece_by_chance(conf, right, draws=500)
    assert got.measured > 0.2 and got.p_value == 0.0 and got.q95 < 0.05


def test_ece_temperature_finds_the_temperature_that_matches_accuracy():
    from harmonixr.evaluate.reliability import ece_temperature

    # every row the same two logits (a, 0), right 3 times in 4: the answer's probability
    # sigmoid(a / T) equals the accuracy 0.75 at T = a / ln 3, where the ECE is 0
    a = 2.0
    logits = np.tile([a, 0.0], (400, 1))
    labels = np.where(np.arange(400) % 4 == 0, 1, 0)
    assert ece_temperature(logits, labels) == pytest.approx(a / np.log(3.0), rel=0.02)
