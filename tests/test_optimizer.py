"""The θ optimizer (python_impl/optimize.py): whatever L-BFGS-B returns, the fit's θ is a point
whose criterion was evaluated, `fit.optimizer` describes that θ, boundary saddles and second
basins are probed, and a fit the engine cannot vouch for says converged=False with a message.

The sweep against lme4 over random designs of every structure is tests/test_optimum_sweep.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import optimize as sopt

import mixbridge
from mixbridge.python_impl import optimize
from mixbridge.python_impl.optimize import optimize_theta


def issue_design(seed: int, slope_sd: float) -> pd.DataFrame:
    """The generator of issue 11 (20 groups x 10 rows)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(20), 10)
    n = 200
    x, x2 = rng.normal(size=n), rng.normal(size=n)
    h = rng.integers(0, 6, n)
    y = (
        1
        + 0.5 * x
        + rng.normal(size=20)[g]
        + slope_sd * rng.normal(size=20)[g] * x
        + 0.3 * rng.normal(size=6)[h]
        + rng.normal(size=n)
    )
    return pd.DataFrame({"y": y, "x": x, "x2": x2, "g": [f"g{i:02d}" for i in g]})


ISSUE_CASES = [("y ~ x + (x + x2 || g)", 6, 0.0), ("y ~ x + (x || g)", 5, 0.3)]


@pytest.mark.parametrize("formula,seed,slope_sd", ISSUE_CASES, ids=["x+x2||g", "x||g"])
def test_issue_examples_reach_lme4s_optimum(needs_r, formula, seed, slope_sd):
    """Issue 11's two designs: L-BFGS-B ended ABNORMAL and its res.x (a failed trial point,
    criterion 606.67) was returned with res.fun (568.18, the value at a point it had passed)."""
    data = issue_design(seed, slope_sd)
    py = mixbridge.lmer(formula, data)
    r = mixbridge.lmer(formula, data, engine="r")
    ours, theirs = r.objective(py.theta), r.objective(r.theta)  # lme4's deviance function
    assert ours <= theirs + 1e-8 * abs(theirs), (py.theta, r.theta, ours, theirs)
    assert py.converged
    # fit.optimizer describes the returned θ: its fval is the criterion there
    assert py.optimizer["fval"] == py.criterion
    assert py.optimizer["fval"] == pytest.approx(ours, rel=1e-10)
    np.testing.assert_allclose(py.theta, r.theta, rtol=1e-3, atol=1e-4)


def _quadratic_with_bound() -> tuple:
    """A smooth criterion on θ >= 0 (minimum 1.0 at [0.3, 0]) and its gradient."""
    center = np.array([0.3, -0.2])

    def f(t):
        d = np.asarray(t) - center
        return 1.0 + float(d @ np.array([[3.0, 1.0], [1.0, 2.0]]) @ d)

    return f, np.zeros(2)


def test_result_is_an_evaluated_point_whatever_lbfgsb_returns(monkeypatch):
    """scipy's (res.x, res.fun) pair is not trusted: here L-BFGS-B is made to return a trial
    point it never evaluated, with a value that belongs to no point."""
    real = sopt.minimize

    def lying_minimize(fun, x0, **kw):
        res = real(fun, x0, **kw)
        res.x = np.asarray(x0) + 0.37 * (np.asarray(res.x) - np.asarray(x0))
        res.fun = float(res.fun) - 100.0
        res.status, res.message = 2, "ABNORMAL: "
        return res

    monkeypatch.setattr(optimize.sopt, "minimize", lying_minimize)
    f, lower = _quadratic_with_bound()
    seen: dict[tuple, float] = {}

    def recorded(t):
        v = f(t)
        seen[tuple(np.asarray(t, float))] = v
        return v

    res = optimize_theta(recorded, np.array([1.0, 1.0]), lower)
    assert tuple(res.final) in seen and seen[tuple(res.final)] == res.fval
    assert res.fval == f(res.final)
    # the constrained optimum: θ_1 = 0.3 - 0.2/3 on the bound θ_2 = 0, criterion 1.08 - 0.04/3
    np.testing.assert_allclose(res.final, [0.3 - 0.2 / 3, 0.0], atol=1e-6)
    assert res.fval == pytest.approx(1.08 - 0.04 / 3, abs=1e-12)


def test_shallow_interior_optimum_beside_a_stationary_bound():
    """The criterion is even in a variance parameter, so θ_i = 0 is stationary; a shallow
    optimum at θ_i = 0.02 (1.2e-4 below the bound's value, as in a (x || g) design of the
    sweep) is beyond a single probe at 0.1 (where the criterion is above the bound's)."""
    a = 0.6
    b = a / (2 * 0.02**2)  # -aθ² + bθ⁴ has its minimum at θ = 0.02

    def f(t):
        t1, t2 = float(t[0]), float(t[1])
        return 10.0 + (t1 - 0.8) ** 2 - a * t2**2 + b * t2**4

    lower = np.zeros(2)
    res = optimize_theta(f, np.array([0.8, 0.0]), lower)
    assert res.final[1] == pytest.approx(0.02, rel=1e-3)
    assert res.fval == pytest.approx(10.0 - a**2 / (4 * b), abs=1e-10)
    assert res.converged and not res.singular


def test_probes_cross_a_correlated_terms_bound_both_ways():
    """T = [[θ0, 0], [θ1, θ2]]: at θ0 = 0 the model with θ0 -> +d is probed with the rest of
    the column as is and negated (TT' is unchanged by negating a column: the reflection)."""
    x = np.array([0.0, 0.16, 0.02, 0.9])
    lower = np.array([0.0, -np.inf, 0.0, 0.0])
    pts = optimize.probe_points(x, np.array([1.0, 0.0, 1.0, 1.0]), lower)
    as_tuples = {tuple(np.round(p, 12)) for p in pts}
    assert (0.1, 0.16, 0.02, 0.9) in as_tuples
    assert (0.1, -0.16, 0.02, 0.9) in as_tuples
    assert (0.001, -0.16, 0.02, 0.9) in as_tuples
    # an interior diagonal is probed at its bound (and not reflected)
    assert (0.0, 0.16, 0.02, 0.0) in as_tuples
    # θ2 = 0.02 is probed at the bound and at 0.1 (0.01, 0.001 lie on its own side)
    assert (0.0, 0.16, 0.0, 0.9) in as_tuples and (0.0, 0.16, 0.1, 0.9) in as_tuples


def test_an_optimizer_that_gives_up_is_reported(monkeypatch):
    """If L-BFGS-B gives up at its start every time (status ABNORMAL after one evaluation), the
    engine cannot reach the optimum of the (x + x2 || g) design from a start at the stationary
    bound; it must not say converged (the old code restarted from a probe at θ_1 = 0.1,
    stopped there, and called the singular fit converged)."""

    def giving_up(fun, x0, **kw):
        value, _ = fun(np.asarray(x0, float))
        return sopt.OptimizeResult(x=np.asarray(x0), fun=value, status=2, message="ABNORMAL: ",
                                   nit=0, nfev=1, success=False)  # fmt: skip

    monkeypatch.setattr(optimize.sopt, "minimize", giving_up)
    data = issue_design(6, 0.0)
    fit = mixbridge.lmer("y ~ x + (x + x2 || g)", data, control={"start": [0.0, 0.0, 0.0]})
    assert not fit.converged
    texts = [m.text for m in fit.messages if m.kind == "warning" and m.code == "convergence"]
    assert any("may not have reached the optimum" in t for t in texts), fit.messages
    assert fit.optimizer["fval"] == fit.criterion
