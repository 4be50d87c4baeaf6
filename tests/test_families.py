"""GLM families and links (mixbridge.python_impl.families) against R's stats::family, run live.

R evaluates every function on the same inputs in one Rscript call (numbers sent back as
17-significant-digit strings); the clamps (logit |eta| > 30, probit/cauchit tails, cloglog and
log floors) are in the grids on purpose.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from mixbridge.errors import DataError
from mixbridge.python_impl.families import DBL_EPSILON, FAMILY_LINKS, get_family

ETA = {
    "logit": [-40.0, -30.5, -29.0, -3.0, -0.2, 0.0, 0.7, 5.0, 29.5, 31.0, 45.0],
    "probit": [-12.0, -8.2, -8.0, -2.0, 0.0, 0.3, 3.0, 8.1, 8.3, 40.0],
    "cauchit": [-1e17, -1e10, -50.0, -1.0, 0.0, 2.0, 1e10, 1e17],
    "cloglog": [-40.0, -5.0, -0.5, 0.0, 0.5, 2.0, 3.6, 4.0, 701.0],
    "log": [-800.0, -40.0, -1.0, 0.0, 0.5, 3.0, 20.0],
    "identity": [-3.0, -0.5, 0.25, 1.0, 7.0],
    "inverse": [-3.0, -0.5, 0.25, 1.0, 7.0],
    "sqrt": [0.1, 0.5, 1.0, 2.5, 7.0],
    "1/mu^2": [0.01, 0.5, 1.0, 4.0, 90.0],
}
MU = {
    "binomial": [1e-12, 0.001, 0.2, 0.5, 0.77, 0.999, 1 - 1e-12],
    "poisson": [1e-10, 0.05, 1.0, 3.5, 40.0],
    "Gamma": [0.01, 0.5, 1.0, 2.5, 40.0],
    "gaussian": [0.2, 0.1, 0.4, 1.0, 9.0],
    "inverse.gaussian": [0.05, 0.5, 1.0, 2.5, 40.0],
}
MU["quasibinomial"], MU["quasipoisson"] = MU["binomial"], MU["poisson"]
Y = {
    "binomial": [0.0, 1.0, 1.0, 0.0, 0.5, 1.0, 0.0],
    "poisson": [0.0, 0.0, 2.0, 3.0, 37.0],
    "Gamma": [0.02, 0.4, 1.3, 2.0, 50.0],
    "gaussian": [1.5, 0.3, 0.4, 2.0, 7.5],
    "inverse.gaussian": [0.1, 0.4, 1.3, 2.0, 30.0],
}
Y["quasibinomial"], Y["quasipoisson"] = Y["binomial"], Y["poisson"]
WT = [1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 1.0]

R_SCRIPT = r"""
library(jsonlite)
inp <- fromJSON(commandArgs(TRUE)[1], simplifyVector = TRUE)
out <- list()
for (key in names(inp$cases)) {
  cs <- inp$cases[[key]]
  fam <- get(cs$family)(link = cs$link)
  y <- cs$y; mu <- cs$mu; wt <- cs$wt[seq_along(y)]; eta <- cs$eta
  dev <- sum(fam$dev.resids(y, mu, wt))
  n <- rep(1, length(y)); weights <- wt; nobs <- length(y)
  etastart <- NULL; start <- NULL; mustart <- NULL; family <- fam
  eval(fam$initialize)
  out[[key]] <- list(
    linkinv = fam$linkinv(eta), mu_eta = fam$mu.eta(eta), linkfun = fam$linkfun(mu),
    variance = fam$variance(mu), dev_resids = fam$dev.resids(y, mu, wt),
    aic = fam$aic(y, n, mu, wt, dev), mustart = mustart,
    valideta = fam$valideta(eta), validmu = fam$validmu(mu))
}
# all 17 significant digits (jsonlite prints 15)
out <- rapply(out, function(v) sprintf("%.17g", v), classes = "numeric", how = "replace")
cat(toJSON(out, auto_unbox = TRUE))
"""


def _cases() -> dict[str, dict]:
    cases = {}
    for family, links in FAMILY_LINKS.items():
        for link in links:
            y = Y[family]
            cases[f"{family}.{link}"] = {
                "family": family,
                "link": link,
                "eta": ETA[link],
                "mu": MU[family],
                "y": y,
                "wt": WT[: len(y)],
            }
    return cases


@pytest.fixture(scope="module")
def r_families(needs_r) -> dict:
    cases = _cases()
    out = subprocess.run(
        ["Rscript", "--vanilla", "-e", R_SCRIPT, json.dumps({"cases": cases})],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _close(py, r, rtol: float) -> None:
    py = np.asarray(py, dtype=float)
    r = np.array([np.nan if v in (None, "NA") else float(v) for v in np.atleast_1d(r)])
    py = np.atleast_1d(py)
    assert py.shape == r.shape
    both_inf = np.isinf(py) & np.isinf(r) & (np.sign(py) == np.sign(r))
    err = np.abs(py - r) / np.maximum(np.abs(r), 1e-300)
    both_nan = np.isnan(py) & np.isnan(r)  # e.g. the quasi families' aic (NA in R)
    err = np.where(both_inf | both_nan | (py == r), 0.0, err)
    assert np.all(err <= rtol), f"max rel err {err.max():.3g}\npy={py}\nR ={r}"


@pytest.mark.parametrize("key", sorted(_cases()))
def test_family_functions_match_r(key: str, r_families: dict) -> None:
    case = _cases()[key]
    r = r_families[key]
    fam = get_family(case["family"], case["link"])
    eta, mu = np.array(case["eta"]), np.array(case["mu"])
    y, wt = np.array(case["y"]), np.array(case["wt"])
    # 4e-15: R's libm/Rmath and numpy/scipy round exp/log/dnorm/qnorm differently in the last
    # bits; pnorm is R's Cody algorithm vs scipy's erfc, which differ by up to ~2e-14 relative
    # deep in the lower tail (eta < -7), hence 3e-14 for probit's linkinv.
    tail = 3e-14 if case["link"] == "probit" else 4e-15
    _close(fam.linkinv(eta), r["linkinv"], tail)
    _close(fam.mu_eta(eta), r["mu_eta"], 4e-15)
    _close(fam.linkfun(mu), r["linkfun"], 4e-15)
    _close(fam.variance(mu), r["variance"], 0.0)
    _close(fam.dev_resids(y, mu, wt), r["dev_resids"], 1e-14)
    dev = float(np.sum(fam.dev_resids(y, mu, wt)))
    # 1e-12: R's dbinom/dpois/dgamma use Loader's saddle-point algorithm, scipy uses lgamma-based
    # formulas; they agree to ~1e-14 relative per term, and the aic sums several terms.
    _close(fam.aic(y, np.ones_like(y), mu, wt, dev), r["aic"], 1e-12)
    _close(fam.initialize(y, wt).mustart, r["mustart"], 0.0)  # plain arithmetic: exact
    assert fam.valideta(eta) == r["valideta"]
    assert fam.validmu(mu) == r["validmu"]


def test_logit_clamps_are_rs() -> None:
    fam = get_family("binomial")
    assert fam.linkinv(np.array([-31.0]))[0] == DBL_EPSILON / (1 + DBL_EPSILON)
    assert fam.mu_eta(np.array([31.0]))[0] == DBL_EPSILON


def test_unsupported_family_or_link_raises() -> None:
    with pytest.raises(DataError, match="link 'probit' not available for the poisson family"):
        get_family("poisson", "probit")
    with pytest.raises(DataError, match="unsupported family 'tweedie'"):
        get_family("tweedie")


def test_binomial_initialize_rejects_out_of_range_and_warns_non_integer() -> None:
    fam = get_family("binomial")
    with pytest.raises(DataError, match=r"y values must be 0 <= y <= 1.*row 1, value 1.5"):
        fam.initialize(np.array([0.0, 1.5]), np.ones(2), response="yb")
    init = fam.initialize(np.array([0.5, 1.0]), np.ones(2))
    assert init.warnings == ("non-integer #successes in a binomial glm!",)
    cb = fam.initialize(np.array([0.25, 0.5]), np.array([4.0, 3.0]), n_trials=np.array([4.0, 3.0]))
    assert cb.warnings == ("non-integer counts in a binomial glm!",)
    np.testing.assert_array_equal(cb.mustart, (np.array([1.0, 1.5]) + 0.5) / np.array([5.0, 4.0]))


def test_cauchit_clamp_is_the_cauchy_quantile_of_machine_epsilon() -> None:
    from scipy import stats

    from mixbridge.python_impl import families

    eps = float(np.finfo(float).eps)
    assert families._CAUCHIT_THRESH == float(-stats.cauchy.ppf(eps))


@pytest.mark.parametrize(
    ("family", "text"),
    [
        ("Gamma", "non-positive values not allowed for the 'Gamma' family"),
        ("inverse.gaussian", "positive values only are allowed for the 'inverse.gaussian' family"),
    ],
)
def test_positive_families_name_the_first_bad_row(family: str, text: str) -> None:
    fam = get_family(family, None)
    with pytest.raises(DataError, match=rf"{text}: response 'yy' row 2 is 0"):
        fam.initialize(np.array([1.0, 2.0, 0.0, -1.0]), np.ones(4), response="yy")
    init = fam.initialize(np.array([1.0, 2.0]), np.ones(2), response="yy")
    np.testing.assert_array_equal(init.y, [1.0, 2.0])
