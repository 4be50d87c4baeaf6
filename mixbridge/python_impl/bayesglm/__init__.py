"""arm's bayesglm (arm 1.13-1) in numpy/scipy: the engine="python" implementation.

One module per stage (docs/architecture.md, section "bayesglm"):

    fit.py       bayesglm(formula, data) and fit_from_matrix(X, y): compose the stages
    terms.py     formula, data -> GLMTerms (y, weights, offset, X; sparse X for large factors)
    priors.py    prior mean, scale, df per coefficient (arm's defaults, scaling, the quirks)
    solver.py    X -> a Design: DenseDesign (dense.py) or BlockedDesign (blocked.py)
    design.py    the Design interface the iteration solves with, and its Solution
    irls.py      arm's IRLS/EM iteration (bayesglm.fit) -> CoreFit
    summary.py   summary.glm / display() quantities, null deviance, aic -> CoreSummary
    result.py    CoreFit + CoreSummary -> BayesGLMFit

The iteration reproduces `arm::bayesglm.fit` step by step (see /work/shared/docs/bayesglm_spec.md).

Deliberate differences from arm (documented, not bugs):
- aic: glm's definition (per-observation binomial trials); arm passes the scalar n.ok as the
  trials and is wrong for cbind/proportion responses and binomial prior weights != 1.
- `subset` is not supported (it is broken in arm); missing values are always dropped (arm ignores
  `na.action` and uses na.omit).
- Rows with zero prior weight are left out of the dispersion EM step (arm recycles vectors of
  different lengths there and returns a meaningless dispersion); they still count in colMeans(X),
  the centred-intercept prior row, as in arm.
- With an offset and an intercept, the null deviance is refitted with the intercept priors only
  (arm errors there when prior_mean/scale/df are vectors).
- `dispersion=` (extension) holds the dispersion phi fixed: no EM step; the prior rows keep
  weight sqrt(phi)/prior_sd; se = se_display = sqrt(diag(V) * phi), vcov = V * phi,
  dispersion = dispersion_pearson = phi; the stopping rule uses the scaled deviance dev/phi (what
  arm sees when phi is passed as prior weights w/phi); `deviance`/`null_deviance` stay unscaled.
- More than VCOV_MAX_COEFS coefficients: `vcov` is None (a note in `messages`); se are exact.

Known limit: fits that hit arm's step halving (eta/mu out of bounds, e.g. poisson with the
identity link at the boundary) repeat R's path only until rounding differences (1e-16, growing
to ~1e-11 over ~25 halvings) flip the number of halvings in some iteration; from then on the two
paths differ and arm's deviance-based stopping rule can stop them at different points.
`extra["deviance_path"]` holds the per-iteration deviances (as R's trace=TRUE prints them).

Speed: a one-hot factor block is never expanded into an n x G matrix or a G x G system
(blocked.py), and when the model uses a factor with >= SPARSE_MIN_LEVELS levels the model matrix
itself is assembled sparsely (terms.py).
"""

from mixbridge.python_impl.bayesglm.fit import bayesglm, fit_from_matrix

__all__ = ["bayesglm", "fit_from_matrix"]
