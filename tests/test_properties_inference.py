"""Property: Satterthwaite and Kenward–Roger tables agree with lmerTest/pbkrtest on generated
grouped data (live R): at lme4's own (θ, σ) within `INFERENCE_AT_THETA` (optimizer-free), and
fit against fit through `compare(tests=True)` under the lmer policy.
Hypothesis profile: HYPOTHESIS_PROFILE=ci (default, derandomized) or thorough.
"""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import assume, event, given, note

import mixbridge
from mixbridge.conformance.tolerance import INFERENCE_AT_THETA
from mixbridge.inference.coef_table import coef_table_at
from mixbridge.testing.strategies import grouped_data, profile_settings


def _at_theta_ok(ours, ref, kr: bool) -> None:
    assert list(ours.index) == list(ref.index)
    for col in ("estimate", "std_error", "df", "statistic", "p_value"):
        tol = INFERENCE_AT_THETA["df_kr" if (col == "df" and kr) else col]
        for name in ours.index:
            a, b = float(ours.loc[name, col]), float(ref.loc[name, col])
            scale = b if col != "estimate" else max(abs(b), float(ref.loc[name, "std_error"]))
            assert abs(a - b) <= tol.bound(scale), (name, col, a, b, tol.reason)


@profile_settings(max_examples=10)
@given(d=grouped_data(family="gaussian", weights=None, max_groups=30, max_rows=300))
def test_tests_match_lmertest_on_generated_data(request, needs_r, d):
    from tests.conftest import require_r_packages

    require_r_packages(request.config, "lmerTest", "pbkrtest")
    note(d.describe())
    # identifiable variance parameters only: with about as many rows as random effects and
    # fixed effects the criterion is flat in θ, the Hessian has a ~0 eigenvalue and whether it
    # passes lmerTest's 1e-8 cut (and so the df) is decided by rounding on either side
    assume(len(d.data) > 2 * d.n_groups + 3)
    # σ_b/σ of 1e2-1e3 with groups of one row: R's side loses the digits the at-θ tolerances
    # assume (under OPENBLAS_CORETYPE=Haswell pbkrtest's KR df came out 1.4e11 and 5.9e12
    # where lmerTest's Satterthwaite df and ours are 1 and 7, and β at the same θ moved by
    # 2e-9 of its SE); those designs are left to the fixed-data tests until the comparison
    # has a recomputing check for R's conditioning (open, issue 13 note)
    assume(d.sd_ratio <= 10)
    formula = d.formula()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular fits: lme4's and lmerTest's warnings
        r = mixbridge.lmer(formula, d.data, engine="r")
        py = mixbridge.lmer(formula, d.data)
        event(f"singular={r.singular}")
        for ddf in ("satterthwaite", "kenward-roger"):
            ref = r.coef_table(ddf=ddf)
            at = coef_table_at(formula, d.data, theta=r.theta, sigma=r.sigma, ddf=ddf)
            note(f"{ddf}\nlmerTest:\n{ref}\nours at lme4's θ:\n{at}")
            _at_theta_ok(at, ref, kr=ddf == "kenward-roger")
        if not (r.singular or py.singular):  # at a boundary: the Hessian's null direction
            cmp = mixbridge.compare(py, r, tests=True)
            note(str(cmp))
            cmp.assert_ok()
    assert np.isfinite(ref["statistic"]).all()
