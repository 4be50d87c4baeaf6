"""Model matrices, column names, responses and random-effects structure against live R.

R computes every reference here, in one Rscript run per session (a plain subprocess, independent
of the bridge): `lme4::lFormula` (X after rank dropping, `col.dropped`, `reTrms$flist`, `cnms`,
`Ztlist`, the response, offset and weights) and `arm::bayesglm(..., x = TRUE)` (keep.order and
drop.baseline model matrices). Data go to R as typed JSON (factor levels and order, logicals,
characters, NA) and come back as JSON.

Tolerance for matrix entries: 1e-12 relative + 1e-12 absolute. jsonlite writes 15 significant
digits (`digits = NA`), so a value differs from R's double by up to ~5e-16 relative after the
round trip, and poly()/scale() are computed with a different (equally exact) algorithm here
(three-term recurrence instead of R's QR): differences are at the 1e-15 level.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixbridge.formula import build_glm_terms, build_mixed_terms

RTOL = ATOL = 1e-12  # see module docstring

R_SCRIPT = r"""
suppressMessages({library(lme4); library(arm); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
inp <- fromJSON(args[1], simplifyVector = TRUE, simplifyDataFrame = FALSE)
make_df <- function(spec) {
  cols <- lapply(spec, function(c) {
    v <- c$values
    if (c$type == "factor") {
      v <- factor(unlist(lapply(v, function(e) if (is.null(e)) NA_character_ else e)),
                  levels = unlist(c$levels), ordered = isTRUE(c$ordered))
    } else if (c$type == "numeric") {
      v <- as.numeric(unlist(lapply(v, function(e) if (is.null(e)) NA_real_ else e)))
    } else if (c$type == "logical") {
      v <- as.logical(unlist(lapply(v, function(e) if (is.null(e)) NA else e)))
    } else if (c$type == "character") {
      v <- as.character(unlist(lapply(v, function(e) if (is.null(e)) NA_character_ else e)))
    }
    v
  })
  names(cols) <- names(spec)
  as.data.frame(cols, stringsAsFactors = FALSE)
}
export_df <- function(d) {
  lapply(d, function(v) {
    if (is.factor(v)) list(type = "factor", levels = levels(v), ordered = is.ordered(v),
                           values = as.character(v))
    else if (is.logical(v)) list(type = "logical", values = v)
    else if (is.character(v)) list(type = "character", values = v)
    else list(type = "numeric", values = as.numeric(v))
  })
}
# a matrix as its dimensions and row-major values (one flat vector: fast to write as JSON)
dense <- function(m) list(dim = dim(m), x = as.numeric(t(m)))
ctrl <- lmerControl(check.nobs.vs.nlev = "ignore", check.nobs.vs.nRE = "ignore",
                    check.nlev.gtr.1 = "ignore", check.scaleX = "ignore")
out <- list()
datasets <- list()
for (case in inp$cases) {
  res <- tryCatch({
    if (case$kind == "terms") {
      tt <- terms(as.formula(case$formula), keep.order = isTRUE(case$keep_order))
      fm <- attr(tt, "factors")
      # (a formula whose terms all cancel has factors integer(0): no codes)
      codes <- lapply(seq_len(NCOL(fm) * (length(fm) > 0)), function(j) {
        v <- fm[, j]; as.list(v[v > 0])
      })
      return_value <- list(labels = attr(tt, "term.labels"), intercept = attr(tt, "intercept"),
                           codes = codes)
      out[[case$id]] <- return_value
      next
    }
    if (!is.null(case$dataset)) {
      pkg <- if (is.null(case$package)) "lme4" else case$package
      e <- new.env(); data(list = case$dataset, package = pkg, envir = e)
      d <- get(case$dataset, e)
      datasets[[case$dataset]] <- export_df(d)
    } else d <- make_df(inp$data[[case$data]])
    f <- as.formula(case$formula)
    if (case$kind == "lformula") {
      lf <- if (is.null(case$family)) lFormula(f, d, control = ctrl)
            else glFormula(f, d, family = case$family,
                           control = glmerControl(check.nobs.vs.nlev = "ignore",
                                                  check.nobs.vs.nRE = "ignore",
                                                  check.nlev.gtr.1 = "ignore",
                                                  check.scaleX = "ignore"))
      X <- lf$X
      rt <- lf$reTrms
      y <- model.response(lf$fr)
      # binomial()$initialize for a two-column response: y = s / n, and 0 where n == 0
      if (is.matrix(y)) y <- ifelse(rowSums(y) == 0, 0, y[, 1] / rowSums(y))
      if (is.factor(y)) y <- as.numeric(y != levels(y)[1])
      list(x_names = colnames(X), X = dense(X),
           dropped = names(attr(X, "col.dropped")),
           nrow = nrow(X),
           rows = as.integer(rownames(lf$fr)),
           y = as.numeric(y),
           offset = if (is.null(model.offset(lf$fr))) NULL else as.numeric(model.offset(lf$fr)),
           flist_names = names(rt$flist),
           flist_levels = unname(lapply(rt$flist, levels)),
           assign = as.integer(attr(rt$flist, "assign")),
           cnms = unname(rt$cnms),
           term_groups = names(rt$cnms),
           Z = unname(lapply(rt$Ztlist, function(z) dense(t(as.matrix(z))))))
    } else if (case$kind == "newdata") {
      fr <- model.frame(f, d)
      tt <- delete.response(terms(fr))
      nd <- make_df(inp$data[[case$newdata]])
      X <- model.matrix(tt, model.frame(tt, nd, xlev = .getXlevels(tt, fr)))
      list(x_names = colnames(X), X = dense(X), nrow = nrow(X))
    } else {
      fam <- if (is.null(case$family)) gaussian() else get(case$family)()
      # maxit = 1: only the model frame and matrix are compared, not the estimates
      fit <- suppressWarnings(bayesglm(f, data = d, family = fam, x = TRUE, maxit = 1,
                                       drop.baseline = isTRUE(case$drop_baseline)))
      list(x_names = colnames(fit$x), X = dense(fit$x), nrow = nrow(fit$x),
           y = as.numeric(fit$y), weights = as.numeric(fit$prior.weights),
           offset = if (is.null(fit$offset)) NULL else as.numeric(fit$offset))
    }
  }, error = function(e) list(error = conditionMessage(e)))
  out[[case$id]] <- res
}
cat(toJSON(list(results = out, datasets = datasets), digits = NA, null = "null",
           auto_unbox = FALSE, na = "null"), file = args[2])
"""


def _r_column(s: pd.Series) -> dict:
    if isinstance(s.dtype, pd.CategoricalDtype):
        vals = [None if pd.isna(v) else str(v) for v in s]
        return {
            "type": "factor",
            "levels": [str(c) for c in s.cat.categories],
            "ordered": bool(s.cat.ordered),
            "values": vals,
        }
    if pd.api.types.is_bool_dtype(s.dtype) or (
        s.dtype == object and all(isinstance(v, bool) for v in s.dropna())
    ):
        return {"type": "logical", "values": [None if pd.isna(v) else bool(v) for v in s]}
    if pd.api.types.is_numeric_dtype(s.dtype):
        return {"type": "numeric", "values": [None if pd.isna(v) else float(v) for v in s]}
    return {"type": "character", "values": [None if pd.isna(v) else str(v) for v in s]}


def _from_r(spec: dict) -> pd.DataFrame:
    cols = {}
    for name, c in spec.items():
        t = c["type"][0]
        vals = c["values"]
        if t == "factor":
            cols[name] = pd.Categorical(vals, categories=c["levels"], ordered=bool(c["ordered"][0]))
        elif t == "numeric":
            cols[name] = np.array([np.nan if v is None else v for v in vals], dtype=float)
        elif t == "logical":
            cols[name] = np.array(vals, dtype=bool)
        else:
            cols[name] = np.array(vals, dtype=object)
    return pd.DataFrame(cols)


def _make_data() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(20240611)
    n = 48
    x = rng.uniform(0.5, 3.0, n)
    d1 = pd.DataFrame(
        {
            "y": rng.normal(10, 2, n),
            "x": x,
            "x2": 2.0 * x,  # exactly collinear with x
            "z": rng.normal(0, 1, n),
            "t": rng.uniform(1, 5, n),
            # custom (non-alphabetical) category order
            "f": pd.Categorical(rng.choice(["lo", "mid", "hi"], n), categories=["lo", "mid", "hi"]),
            # mixed-case strings: R's level order is locale (ICU) collation
            "g": rng.choice(["b", "A", "a", "B", "_x", "Z10", "z2"], n).astype(object),
            "b": rng.random(n) > 0.4,
            "h": rng.integers(1, 5, n).astype(float),
            "o": pd.Categorical(
                rng.choice(["low", "med", "high", "top"], n),
                categories=["low", "med", "high", "top"],
                ordered=True,
            ),
            # a category that never occurs
            "k": pd.Categorical(rng.choice(["u", "v"], n), categories=["u", "w", "v"]),
            "s": rng.integers(0, 8, n).astype(float),
            "fl": rng.integers(0, 8, n).astype(float),
            "yb": (rng.random(n) > 0.5).astype(float),
        }
    )
    d1["f2"] = d1["f"].copy()  # a duplicate factor: rank deficient
    # nearly collinear with x: relative residual ~1e-9 (< lme4's tol 1e-7: dropped) and ~1e-5
    d1["xn9"] = d1["x"] + 1e-9 * rng.normal(size=n)
    d1["xn5"] = d1["x"] + 1e-5 * rng.normal(size=n)
    d2 = d1.copy()
    d2.loc[[2, 7], "x"] = np.nan
    d2.loc[[5], "y"] = np.nan
    d2["g"] = d2["g"].astype(object)
    d2.loc[[11, 30], "g"] = None
    d2.loc[[19], "f"] = np.nan
    d2.loc[[3], "h"] = np.nan
    # new data for predictions: a subset of the rows, in another order, fewer levels present
    d3 = d1.iloc[[5, 1, 30, 12, 7, 44, 20]].reset_index(drop=True).copy()
    d3["x"] = d3["x"] + 0.25  # new values: poly()/scale() must use the fit's coefficients
    d3["z"] = d3["z"] * 2.0
    return {"d1": d1, "d2": d2, "d3": d3}


FIXED = [
    "y ~ x + z",
    "y ~ f",
    "y ~ g",
    "y ~ b",
    "y ~ x:f",
    "y ~ f:g",
    "y ~ f*g",
    "y ~ 0 + f",
    "y ~ f - 1 + x",
    "y ~ I(x^2) + log(x) + sqrt(t) + exp(z)",
    "y ~ I(x * 2 - 1/z) + I(-x)",
    "y ~ I(x^0.5) + I((x + 1)^2) + I(z - -1) + I(+t) + I(z^3 * 0.001) + I(1/z^2)",
    "y ~ I(z/123456789012 + t^3) + I(z * 1e-05 + x^4) + I(2.50 * z^5) + exp(-z/3)",
    "y ~ poly(x, 2)",
    "y ~ poly(x, 3) + z",
    "y ~ poly(z, 1) + I(b) + factor(b)",
    "y ~ f + poly(z, 2):f + scale(x):b",
    "y ~ scale(x)",
    "y ~ factor(h)",
    "y ~ x*z*f - x:z:f",
    "y ~ (x + z + f)^2",
    "y ~ o",
    "y ~ 0 + o",
    "y ~ x + x:o",
    "y ~ b*f",
    "y ~ -1 + f:x",
    "y ~ x + x2",
    "y ~ x + xn9 + xn5",
    "y ~ xn5 + z + x + xn9",
    "y ~ f + f2",
    "y ~ x + offset(log(t))",
    "y ~ k",
    "y ~ f/x",
    "y ~ z:f + f",
    "y ~ f:b + g",
    "log(y) ~ x + b:z",
    "y ~ c:a + b + a:b:c".replace("a", "f").replace("c", "z"),
    # comparisons inside I(): a logical variable, coded like a factor with levels FALSE, TRUE
    "y ~ I(x>1.5) + z",
    "y ~ I(x>=1&z<0) + I(!b) + I(z != 0)",
    "y ~ I(x > 0)",  # always TRUE: the TRUE column duplicates the intercept and is dropped
    "y ~ 0 + I(x > 100)",  # never TRUE: R keeps both levels (FALSE, TRUE), TRUE is dropped
    "y ~ I(x>2):f",
    "y ~ I(1 - (z > 0)) + I((x > 2) * t) + I(-z<=-0.5)*x",
    "y ~ b + I(!b) + I(b & z > 0) + I(h == 2)",
    "y ~ I(!x > 2 & !(h != 3))",
]
RANDOM = [
    "y ~ x + (1 | g)",
    "y ~ x + (x | f)",
    "y ~ z + (x || g)",
    "y ~ 1 + (1 | f/g)",
    "y ~ 1 + (1 | f:g)",
    "y ~ x + (0 + f | g)",
    "y ~ x + (1 | g) + (1 | h)",
    "y ~ x + (1 | h) + (1 | f)",
    "y ~ x + (1 | f) + (1 | h)",
    "y ~ x + (1 + log(t) | b)",
    "y ~ x + (poly(z, 2) | g)",
    "y ~ x + (1 | f) + (1 | f2) + (1 | g)",  # a tie in levels: lme4 reverses it
    "y ~ x + (b | f2:g) + (1 | f2)",
    "y ~ x + (f || g)",
    "y ~ x + (0 + x + z || g)",
    "y ~ 0 + (1 | g)",
    "y ~ scale(z) + (scale(z) | f)",
    "y ~ x + (0 + scale(t) + log(x) | g)",
    "y ~ x + (0 + I(z > 0) | g)",
    "y ~ x + (I(x>2) || g)",
    "y ~ I(x > 2) + (I(x > 2) | f)",
]
GLM = [
    ("y ~ f + x:f + b", "gaussian", True),
    ("y ~ f + x:f + b", "gaussian", False),
    ("y ~ x:z + x + f", "gaussian", True),
    ("y ~ 0 + f + x", "gaussian", False),
    ("y ~ o + x", "gaussian", False),
    ("y ~ 0 + o", "gaussian", False),
    ("y ~ k + x", "gaussian", False),
    ("y ~ k + x", "gaussian", True),
    ("y ~ g + x", "gaussian", False),
    ("yb ~ f*x", "binomial", True),
    ("cbind(s, fl) ~ x + f", "binomial", True),
    ("y ~ x + offset(log(t))", "gaussian", True),
    ("y ~ I(x>1.5) + I(z < 0 & b)", "gaussian", True),
    ("y ~ I(x>1.5) + I(z < 0 & b)", "gaussian", False),
    ("y ~ x + I(x > 100)", "gaussian", True),  # arm keeps the all-zero TRUE column
    ("I(y > 10) ~ x + I(!b)", "binomial", True),
]
BINOMIAL = [
    "f ~ x + (1 | g)",
    "b ~ z + (1 | h)",
    "cbind(s, fl) ~ x + (1 | g)",
    "yb ~ f + (1 | g)",
    "I(y > 10) ~ x + (1 | g)",
    "I(!b) ~ z + I(z > 0) + (1 | h)",
]
DATASETS = [  # (data set, formula, family, R package)
    ("Pastes", "strength ~ 1 + (1 | batch/cask)", None, "lme4"),
    ("sleepstudy", "Reaction ~ Days + (Days || Subject)", None, "lme4"),
    ("cbpp", "cbind(incidence, size - incidence) ~ period + (1 | herd)", "binomial", "lme4"),
    ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", None, "lme4"),
    # typed as users do (no spaces): R names the column "I(week > 2)TRUE"
    ("bacteria", "y ~ trt + I(week>2) + (1|ID)", "binomial", "MASS"),
]


TERMS = [
    ("y ~ a*b*c", False),
    ("y ~ (a+b+c)^2 - a:b", False),
    ("y ~ a/b", False),
    ("y ~ (a+b)/c", False),
    ("y ~ a %in% b", False),
    ("y ~ b:a + a", False),
    ("y ~ a + b:a", False),
    ("y ~ c:a + b + a:b:c", False),
    ("y ~ c:a + b + a:b:c", True),
    ("y ~ 0 + a", False),
    ("y ~ a - 1", False),
    ("y ~ -1 + a + 1", False),
    ("y ~ a + b - b", False),
    ("y ~ (a + b):(c + d)", False),
    ("y ~ a:b + a:c", False),
    ("y ~ a:b + a:c + b:c", False),
    ("y ~ a*b + c - a", False),
    ("y ~ log(a) + log(a):b + I(a^2)", False),
    ("y ~ a/b/c", False),
    ("y ~ (a+b+c)^3", False),
    ("y ~ a:b:c + a", False),
    ("y ~ a:b:c + a", True),
    ("y ~ a + b %in% a", False),
    ("y ~ (a + b + c)^2 - a", False),
    ("y ~ a*b - 1", False),
    ("y ~ poly(a, 2)*b", False),
    ("y ~ b + a + a:b + a:b:c + c", True),
    ("y ~ (a + b + a:c)^2", True),
    ("y ~ (a + b + c)^3 - a:b", True),
]
NEWDATA = [
    "y ~ poly(x, 2) + scale(z) + f + g + b",
    "y ~ x*f + log(t) + o + factor(h)",
    "y ~ I(x > 1.5) + I(!b):z + I(z < 0 & h != 2)",
]


def _cases() -> list[dict]:
    cases = []
    for i, (f, keep) in enumerate(TERMS):
        cases.append({"id": f"terms-{i}", "kind": "terms", "formula": f, "keep_order": keep})
    for i, f in enumerate(NEWDATA):
        cases.append(
            {"id": f"newdata-{i}", "kind": "newdata", "data": "d1", "newdata": "d3", "formula": f}
        )
    for data in ("d1", "d2"):
        for i, f in enumerate(FIXED):
            if data == "d2" and "poly" in f:
                continue  # R's poly() stops on NA (tested in test_formula_frames)
            rhs_extra = " + (1 | h)"
            cases.append(
                {
                    "id": f"fixed-{data}-{i}",
                    "kind": "lformula",
                    "data": data,
                    "formula": f + rhs_extra,
                }
            )
        for i, f in enumerate(RANDOM):
            cases.append(
                {"id": f"random-{data}-{i}", "kind": "lformula", "data": data, "formula": f}
            )
    for i, (f, fam, db) in enumerate(GLM):
        for data in ("d1", "d2"):
            cases.append(
                {
                    "id": f"glm-{data}-{i}",
                    "kind": "bayesglm",
                    "data": data,
                    "formula": f,
                    "family": fam,
                    "drop_baseline": db,
                }
            )
    for i, f in enumerate(BINOMIAL):
        for data in ("d1", "d2"):
            cases.append(
                {
                    "id": f"binom-{data}-{i}",
                    "kind": "lformula",
                    "data": data,
                    "formula": f,
                    "family": "binomial",
                }
            )
    for name, f, fam, package in DATASETS:
        case = {"id": f"ds-{name}", "kind": "lformula", "dataset": name, "formula": f}
        case["package"] = package
        if fam:
            case["family"] = fam
        cases.append(case)
    return cases


@pytest.fixture(scope="module")
def r_results(needs_r):
    data = _make_data()
    payload = {
        "data": {k: {c: _r_column(df[c]) for c in df.columns} for k, df in data.items()},
        "cases": _cases(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in.json"
        out = Path(tmp) / "out.json"
        script = Path(tmp) / "run.R"
        inp.write_text(json.dumps(payload, allow_nan=False))
        script.write_text(R_SCRIPT)
        proc = subprocess.run(
            ["Rscript", "--vanilla", str(script), str(inp), str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        res = json.loads(out.read_text())
    return data, res["results"], res["datasets"]


def _mat(m: dict) -> np.ndarray:
    vals = np.array([np.nan if v is None else v for v in (m["x"] or [])], dtype=float)
    return vals.reshape(m["dim"])


def _check_fixed(t, r) -> None:
    assert "error" not in r, r.get("error")
    assert t.x_names == (r["x_names"] or [])
    assert t.dropped_columns == (r.get("dropped") or [])
    x_r = _mat(r["X"])
    assert t.X.shape == x_r.shape
    np.testing.assert_allclose(t.X, x_r, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(t.y, np.array(r["y"], dtype=float), rtol=RTOL, atol=ATOL)
    if r.get("offset"):
        np.testing.assert_allclose(t.offset, np.array(r["offset"], float), rtol=RTOL, atol=ATOL)
    else:
        assert not t.offset.any()


def _check_random(t, r) -> None:
    # terms in lme4's order: group names, column names, level order, Z
    assert [rt.group for rt in t.reterms] == r["term_groups"]
    assert [rt.cnames for rt in t.reterms] == r["cnms"]
    flist = dict(zip(r["flist_names"], r["flist_levels"], strict=True))
    for rt in t.reterms:
        assert rt.levels == flist[rt.group]
    for rt, z_r in zip(t.reterms, r["Z"], strict=True):
        # lme4's Z_k is level-major: column j*p + c holds coefficient c of level j
        z = np.zeros((t.n, rt.n_levels * rt.p))
        for c in range(rt.p):
            z[np.arange(t.n), rt.codes * rt.p + c] = rt.Z[:, c]
        np.testing.assert_allclose(z, _mat(z_r), rtol=RTOL, atol=ATOL)


def _random_formulas(seed: int, count: int) -> list[str]:
    """Seeded random fixed-effects formulas mixing R's operators, factors and transforms."""
    import random

    rnd = random.Random(seed)
    atoms = ["x", "z", "f", "g", "b", "o", "log(t)", "I(x^2)", "poly(z, 2)", "factor(h)", "k"]
    atoms += ["I(x > 1.5)", "I(z <= 0 & !b)"]

    def expr(depth: int) -> str:
        if depth == 0 or rnd.random() < 0.35:
            return rnd.choice(atoms)
        op = rnd.choice([" + ", " * ", ":", " / ", " %in% ", " - "])
        left, right = expr(depth - 1), expr(depth - 1)
        out = f"{left}{op}{right}"
        if rnd.random() < 0.4:
            out = f"({out})" + ("^2" if rnd.random() < 0.3 else "")
        return out

    formulas = []
    while len(formulas) < count:
        rhs = expr(3)
        prefix = rnd.choice(["", "", "", "0 + ", "-1 + "])
        formulas.append(f"y ~ {prefix}{rhs}")
    return formulas


RANDOM_FIXED = _random_formulas(20240611, 30)
FIXED += RANDOM_FIXED
# the same algebra with keep.order = TRUE (bayesglm), on more random formulas
TERMS += [(f, True) for f in RANDOM_FIXED + _random_formulas(7, 30)]
TERMS += [(f, False) for f in _random_formulas(7, 30)]
GLM += [(f, "gaussian", i % 2 == 0) for i, f in enumerate(_random_formulas(11, 12))]

FIXED_PARAMS = [
    (d, i) for d in ("d1", "d2") for i, f in enumerate(FIXED) if not (d == "d2" and "poly" in f)
]


@pytest.mark.parametrize("data_name,i", FIXED_PARAMS)
def test_fixed_part_matches_lformula(r_results, data_name, i):
    data, res, _ = r_results
    f = FIXED[i]
    t = build_mixed_terms(f + " + (1 | h)", data[data_name])
    r = res[f"fixed-{data_name}-{i}"]
    _check_fixed(t, r)
    _check_random(t, r)
    # the rows kept after na.omit are the rows R kept
    assert (np.asarray(t.row_index) + 1).tolist() == r["rows"]


@pytest.mark.parametrize("data_name", ["d1", "d2"])
@pytest.mark.parametrize("i", range(len(RANDOM)))
def test_random_terms_match_lformula(r_results, data_name, i):
    data, res, _ = r_results
    t = build_mixed_terms(RANDOM[i], data[data_name])
    r = res[f"random-{data_name}-{i}"]
    _check_fixed(t, r)
    _check_random(t, r)


@pytest.mark.parametrize("data_name", ["d1", "d2"])
@pytest.mark.parametrize("i", range(len(GLM)))
def test_glm_terms_match_bayesglm(r_results, data_name, i):
    data, res, _ = r_results
    f, fam, drop_baseline = GLM[i]
    t = build_glm_terms(f, data[data_name], family=fam, drop_baseline=drop_baseline)
    r = res[f"glm-{data_name}-{i}"]
    assert "error" not in r, r.get("error")
    assert t.x_names == r["x_names"]
    x_r = _mat(r["X"])
    np.testing.assert_allclose(t.X, x_r, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(t.y, np.array(r["y"], float), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(t.weights, np.array(r["weights"], float), rtol=RTOL, atol=ATOL)
    if r.get("offset"):
        np.testing.assert_allclose(t.offset, np.array(r["offset"], float), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name,formula,family,package", DATASETS)
def test_lme4_datasets_match_lformula(r_results, name, formula, family, package):
    _, res, datasets = r_results
    data = _from_r(datasets[name])
    t = build_mixed_terms(formula, data, model="glmer" if family else "lmer", family=family)
    r = res[f"ds-{name}"]
    _check_fixed(t, r)
    _check_random(t, r)
    if name == "bacteria":  # R's deparse spacing, whatever the user typed
        assert t.x_names == ["(Intercept)", "trtdrug", "trtdrug+", "I(week > 2)TRUE"]


@pytest.mark.parametrize("i", range(len(TERMS)))
def test_terms_match_r_terms_formula(r_results, i):
    from mixbridge.formula.model_matrix import term_codes
    from mixbridge.formula.parse import parse_formula
    from mixbridge.formula.terms import expand_terms

    _, res, _ = r_results
    f, keep = TERMS[i]
    r = res[f"terms-{i}"]
    info = expand_terms(parse_formula(f).rhs, keep_order=keep)
    assert info.labels == (r["labels"] or [])
    assert info.intercept == bool(r["intercept"][0])
    # R's attr(terms, "factors"): 1 = coded by contrasts, 2 = by indicators (before
    # model.matrix's no-intercept adjustment, hence intercept=True here)
    codes = term_codes(info.terms, [True] * len(info.variables), intercept=True)
    for term, code, r_code in zip(info.terms, codes, r["codes"], strict=True):
        mine = {info.var_names[v]: code[v] for v in term}
        assert mine == {k: v[0] for k, v in r_code.items()}


@pytest.mark.parametrize("i", range(len(NEWDATA)))
def test_fixed_matrix_for_newdata_uses_fit_levels_and_predvars(r_results, i):
    data, res, _ = r_results
    t = build_mixed_terms(NEWDATA[i] + " + (1 | h)", data["d1"])
    r = res[f"newdata-{i}"]
    assert "error" not in r, r.get("error")
    x_r = _mat(r["X"])
    cols = [r["x_names"].index(c) for c in t.x_names]  # R keeps dropped columns here
    np.testing.assert_allclose(t.fixed_matrix(data["d3"]), x_r[:, cols], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("data_name", ["d1", "d2"])
@pytest.mark.parametrize("i", range(len(BINOMIAL)))
def test_binomial_responses_match_glformula(r_results, data_name, i):
    data, res, _ = r_results
    t = build_mixed_terms(BINOMIAL[i], data[data_name], model="glmer", family="binomial")
    r = res[f"binom-{data_name}-{i}"]
    _check_fixed(t, r)
    _check_random(t, r)
