"""Bootstrap intervals over prompts: hand-computed resampling distributions, joint resampling, the seed, and
coverage of a known ratio at about the nominal rate."""

import math

import pytest
import torch

from circuitfind.errors import ConfigError, ShapeError
from circuitfind.evaluate.scores import cpr_cmd
from circuitfind.validation import (
    Interval,
    bootstrap_interval,
    cpr_cmd_interval,
    faithfulness_interval,
    faithfulness_intervals,
    lower_bound_level,
    resample_indices,
)


def test_interval_is_the_percentiles_of_the_hand_computed_resampling_distribution():
    # two prompts, m(N) = 1 and m(empty) = 0 on both: f of a resample is the mean of the circuit values drawn,
    # 0 / 0.5 / 1 with probability 1/4, 1/2, 1/4. The 30% and 70% percentiles are both 0.5; 2.5% and 97.5% are 0, 1.
    c, full, empty = [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]
    narrow = faithfulness_interval(c, full, empty, n_boot=4000, level=0.4, seed=1)
    wide = faithfulness_interval(c, full, empty, n_boot=4000, level=0.95, seed=1)
    assert (narrow.lo, narrow.hi) == (0.5, 0.5)
    assert (wide.lo, wide.hi) == (0.0, 1.0)
    # 80% interval: 10% and 90% percentiles are 0 and 1 (a quarter of the mass at each end)
    mid = faithfulness_interval(c, full, empty, n_boot=4000, level=0.8, seed=1)
    assert (mid.lo, mid.hi) == (0.0, 1.0)


def test_prompts_are_resampled_jointly_and_the_statistic_is_a_ratio_of_means():
    # the circuit equals the full model on every prompt: f = 1 on every joint resample, however spread the values
    same = faithfulness_interval([1.0, 5.0, 9.0], [1.0, 5.0, 9.0], [0.0, 2.0, -3.0], n_boot=300, seed=0)
    assert same.lo == pytest.approx(1.0) and same.hi == pytest.approx(1.0)
    # ratio of means, not mean of per-prompt ratios: checked against a statistic written out here
    c = torch.tensor([1.0, 10.0, 3.0, 0.5], dtype=torch.float64)
    nf = torch.tensor([2.0, 10.0, 4.0, 1.0], dtype=torch.float64)
    ne = torch.tensor([0.0, 1.0, 0.0, 0.5], dtype=torch.float64)

    def ratio(i):
        return float((c[i].mean() - ne[i].mean()) / (nf[i].mean() - ne[i].mean()))

    by_hand = bootstrap_interval(ratio, 4, n_boot=500, level=0.9, seed=3)
    fast = faithfulness_interval(c, nf, ne, n_boot=500, level=0.9, seed=3)
    assert fast.lo == pytest.approx(by_hand.lo, abs=1e-12) and fast.hi == pytest.approx(by_hand.hi, abs=1e-12)
    mean_of_ratios = bootstrap_interval(
        lambda i: float(((c[i] - ne[i]) / (nf[i] - ne[i])).mean()), 4, n_boot=500, level=0.9, seed=3
    )
    assert (mean_of_ratios.lo, mean_of_ratios.hi) != pytest.approx((fast.lo, fast.hi), abs=1e-3)


def test_seed_reproduces_and_another_seed_differs():
    gen = torch.Generator().manual_seed(0)
    c, nf, ne = torch.rand(3, 30, generator=gen)
    nf = nf + 2
    a = faithfulness_interval(c, nf, ne, n_boot=200, seed=7)
    b = faithfulness_interval(c, nf, ne, n_boot=200, seed=7)
    other = faithfulness_interval(c, nf, ne, n_boot=200, seed=8)
    assert a == b and a.to_dict() == {"lo": a.lo, "hi": a.hi, "level": 0.95, "n_boot": 200, "seed": 7}
    assert (a.lo, a.hi) != (other.lo, other.hi)
    assert torch.equal(resample_indices(30, 5, 7), resample_indices(30, 5, 7))


def test_coverage_of_a_known_ratio_is_about_nominal():
    # 400 synthetic datasets of 40 prompts with the true ratio 0.8: m(C) = m(empty) + 0.8 (m(N) - m(empty)) + noise
    gen = torch.Generator().manual_seed(0)
    truth, n, hits, trials = 0.8, 40, 0, 400
    widths = []
    for t in range(trials):
        empty = torch.randn(n, generator=gen) * 0.5
        full = empty + 2.0 + torch.randn(n, generator=gen) * 0.7
        circuit = empty + truth * (full - empty) + torch.randn(n, generator=gen) * 0.5
        ci = faithfulness_interval(circuit, full, empty, n_boot=400, seed=t)
        hits += ci.contains(truth)
        widths.append(ci.hi - ci.lo)
    coverage = hits / trials
    # SE of the estimate 0.011; a 90% or a 99% interval (0.89, 0.975 here) falls outside
    assert 0.91 <= coverage <= 0.97, coverage
    assert 0.05 < sum(widths) / trials < 0.5


def test_many_circuits_share_resamples_and_match_one_at_a_time():
    gen = torch.Generator().manual_seed(1)
    rows, nf, ne = torch.rand(3, 12, generator=gen), torch.rand(12, generator=gen) + 1, torch.rand(12, generator=gen)
    together = faithfulness_intervals(rows, nf, ne, n_boot=100, seed=2)
    alone = [faithfulness_interval(r, nf, ne, n_boot=100, seed=2) for r in rows]
    assert together == alone


def test_cpr_cmd_intervals_match_the_areas_recomputed_by_hand_on_each_resample():
    gen = torch.Generator().manual_seed(2)
    n, fractions, f64 = 10, [0.1, 0.5, 1.0], torch.float64
    nf, ne = torch.rand(n, generator=gen, dtype=f64) + 2, torch.rand(n, generator=gen, dtype=f64)
    noise = 0.1 * torch.randn(2, 3, n, generator=gen, dtype=f64)
    signed = ne + torch.tensor([[0.3], [1.2], [1.0]], dtype=f64) * (nf - ne) + noise[0]
    absolute = ne + torch.tensor([[0.6], [0.9], [1.0]], dtype=f64) * (nf - ne) + noise[1]

    def curve(v, i):
        return [float((r[i].mean() - ne[i].mean()) / (nf[i].mean() - ne[i].mean())) for r in v]

    cpr_hand = bootstrap_interval(lambda i: cpr_cmd(curve(signed, i), fractions)[0], n, n_boot=300, seed=4)
    cmd_hand = bootstrap_interval(lambda i: cpr_cmd(curve(absolute, i), fractions)[1], n, n_boot=300, seed=4)
    cpr, cmd = cpr_cmd_interval(signed, absolute, nf, ne, fractions, n_boot=300, seed=4)
    assert (cpr.lo, cpr.hi) == pytest.approx((cpr_hand.lo, cpr_hand.hi), abs=1e-9)
    assert (cmd.lo, cmd.hi) == pytest.approx((cmd_hand.lo, cmd_hand.hi), abs=1e-9)


def test_zero_span_resamples_are_left_out_and_all_zero_gives_nan():
    flat = faithfulness_interval([1.0, 1.0], [1.0, 1.0], [1.0, 1.0], n_boot=50)
    assert math.isnan(flat.lo) and math.isnan(flat.hi)


def test_bad_inputs_say_what_was_expected():
    with pytest.raises(ShapeError, match="same length"):
        faithfulness_interval([1.0, 2.0], [1.0, 2.0, 3.0], [0.0, 0.0])
    with pytest.raises(ShapeError, match="one value per prompt"):
        faithfulness_interval([1.0], [1.0, 2.0], [0.0, 0.0])
    with pytest.raises(ConfigError, match="n_boot"):
        faithfulness_interval([1.0], [1.0], [0.0], n_boot=0)
    with pytest.raises(ConfigError, match="level"):
        faithfulness_interval([1.0], [1.0], [0.0], level=95)
    with pytest.raises(ConfigError, match="confidence"):
        lower_bound_level(0.3)
    one = faithfulness_interval([0.5], [2.0], [1.0], n_boot=3)  # one prompt: every resample is that prompt
    assert isinstance(one, Interval) and (one.lo, one.hi) == (-0.5, -0.5)  # (0.5 - 1) / (2 - 1), by hand
