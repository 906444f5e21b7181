"""The candidate grid of compound coefficients (EfficientNet section 3.3 step 1)."""


import pytest

from effnet.profile import count_flops
from effnet.profile.sweep import _measure_architecture, measure_grid
from effnet.scaling import GridPoint, architecture_key, compound_scale, grid_candidates, grid_points
from effnet.specs import EFFICIENTNET_B0

B0 = EFFICIENTNET_B0


def brute_force(step_den: int, tol_num: int, tol_den: int) -> set[tuple[int, int, int]]:
    """Grid points as integers n / step_den (step = 1 / step_den), written independently of the
    code: every n_a, n_b, n_g >= step_den with |n_a n_b^2 n_g^2 / step_den^5 - 2| <= tol, in exact
    integer arithmetic (each factor <= 2 + tol bounds the search generously at 3)."""
    d5 = step_den**5
    out = set()
    for a in range(step_den, 3 * step_den + 1):
        for b in range(step_den, 3 * step_den + 1):
            for g in range(step_den, 3 * step_den + 1):
                if abs(a * b * b * g * g * tol_den - 2 * d5 * tol_den) <= tol_num * d5:
                    out.add((a, b, g))
    return out


def test_grid_matches_a_brute_force_enumeration():
    # step 0.05 = 1/20, tolerance 0.1 = 1/10
    expected = brute_force(20, 1, 10)
    points = grid_points(phi=1, step=0.05, tolerance=0.1)
    assert len(points) == len(expected) == 111
    assert {(round(p.alpha * 20), round(p.beta * 20), round(p.gamma * 20)) for p in points} == expected
    # A coarser grid: step 0.1, tolerance 0.05.
    assert len(grid_points(step=0.1, tolerance=0.05)) == len(brute_force(10, 1, 20))


def test_grid_holds_the_papers_point_and_every_point_meets_the_constraint():
    points = grid_points()
    assert (1.2, 1.1, 1.15) in [p.coefficients for p in points]  # EfficientNet section 3.3
    for p in points:
        assert min(p.alpha, p.beta, p.gamma) >= 1
        assert abs(p.alpha * p.beta**2 * p.gamma**2 - 2) <= 0.1 + 1e-12
    # The edge is kept exactly: alpha = 2.1 (beta = gamma = 1) has |2.1 - 2| = 0.1, which float
    # arithmetic (1 + 22 * 0.05 = 2.1000000000000001) would drop.
    assert (2.1, 1.0, 1.0) in [p.coefficients for p in points]


def test_phi_changes_the_prediction_not_the_grid():
    one, two = grid_points(phi=1), grid_points(phi=2)
    assert [p.coefficients for p in one] == [p.coefficients for p in two]
    p = next(p for p in two if p.coefficients == (1.2, 1.1, 1.15))
    assert p.flops_ratio_predicted == pytest.approx((1.2 * 1.1**2 * 1.15**2) ** 2)  # 3.6874


@pytest.mark.parametrize("kwargs, words", [
    ({"step": 0}, "step must be a positive number"),
    ({"step": -0.05}, "step must be a positive number"),
    ({"tolerance": 0}, "tolerance must be a positive number"),
    ({"tolerance": -0.1}, "tolerance must be a positive number"),
    ({"phi": 0}, "phi must be > 0"),
    ({"phi": -1}, "phi must be > 0"),
    # Values 1 and 1.7 only: products 1, 1.7, 2.89, ...; none within 0.05 of 2.
    ({"step": 0.7, "tolerance": 0.05}, "loosen the constraint: a larger tolerance or a smaller step"),
    ({"step": 0.001}, "more than 10,000 points"),
])
def test_bad_grids_are_refused_with_a_message(kwargs, words):
    with pytest.raises(ValueError, match=words):
        grid_points(**kwargs)


def test_points_that_round_to_the_same_network_are_merged():
    # alpha 1.0, 1.05 and 1.1 with beta 1.15, gamma 1.2: repeats round(n * alpha) for B0's
    # n = 1, 2, 2, 3, 3, 4, 1 stay n (4 * 1.1 = 4.4 and 3 * 1.1 = 3.3 round down), and the width
    # and resolution are the same, so the three are one network.
    points = [GridPoint(1.0, 1.15, 1.2), GridPoint(1.05, 1.15, 1.2), GridPoint(1.1, 1.15, 1.2),
              GridPoint(1.15, 1.15, 1.2)]  # 4 * 1.15 = 4.6 -> 5 blocks: a different network
    cands = grid_candidates(B0, points)
    assert [c.point.coefficients for c in cands] == [(1.0, 1.15, 1.2), (1.15, 1.15, 1.2)]
    assert [p.coefficients for p in cands[0].collapsed] == [(1.05, 1.15, 1.2), (1.1, 1.15, 1.2)]
    assert cands[1].collapsed == ()
    assert cands[0].spec.num_blocks == 16 and cands[1].spec.num_blocks > 16


@pytest.mark.slow  # builds every distinct network of the B0 grid on the meta device: 20-80 s on a loaded CPU
def test_measured_grid_for_b0():
    points = grid_points(phi=1, step=0.05, tolerance=0.1)
    _measure_architecture.cache_clear()  # count a cold listing's measurements
    rows = measure_grid(B0, points, phi=1)
    # Each distinct network is built and counted once (the rows), plus the base the ratios divide by.
    assert _measure_architecture.cache_info().misses <= len(rows) + 1
    # Every point is listed once, as a row or as collapsed into one; rows are distinct networks.
    listed = [(r.alpha, r.beta, r.gamma) for r in rows] + [c for r in rows for c in r.collapsed]
    assert sorted(listed) == sorted(p.coefficients for p in points)
    keys = {architecture_key(compound_scale(B0, 1, r.alpha, r.beta, r.gamma)) for r in rows}
    assert len(keys) == len(rows) < len(points)
    for r in rows:
        assert r.flops_ratio_predicted == pytest.approx(r.alpha * r.beta**2 * r.gamma**2)
        assert r.flops_ratio > 0 and r.flops > 0 and r.params > 0
        # rounding moves FLOPs, but not by more than a third (measured: 0.91x to 1.26x the prediction)
        assert 0.75 < r.flops_ratio / r.flops_ratio_predicted < 1.33
    # The paper's point, against an independent count of the same scaled network.
    (paper,) = [r for r in rows if (r.alpha, r.beta, r.gamma) == (1.2, 1.1, 1.15)]
    assert paper.flops_ratio == pytest.approx(count_flops(compound_scale(B0, 1, 1.2, 1.1, 1.15)) / count_flops(B0))
    assert paper.resolution == 258 and paper.blocks == 19  # round(n * 1.2): 1, 2, 2, 4, 4, 5, 1
    # A second listing reads the cache: nothing is built again.
    misses = _measure_architecture.cache_info().misses
    assert measure_grid(B0, phi=1, step=0.05, tolerance=0.1) == rows
    assert _measure_architecture.cache_info().misses == misses


def test_measure_grid_refuses_mismatched_phi_and_absurd_sizes():
    with pytest.raises(ValueError, match="points are for phi=1, not phi=2"):
        measure_grid(B0, grid_points(phi=1, step=0.5, tolerance=0.5), phi=2)
    with pytest.raises(ValueError, match="refused without building it"):
        measure_grid(B0, phi=40, step=0.5, tolerance=0.5)
