"""Input checks: every rejection is a mixbridge error naming the column, argument or token."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.checks import check_bayesglm_args, check_inputs
from mixbridge.errors import ArgumentError, DataError, FormulaError


@pytest.fixture
def df() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 24
    return pd.DataFrame(
        {
            "y": rng.normal(size=n),
            "x": rng.normal(size=n),
            "g": np.repeat(list("abcdef"), 4).astype(object),
            "yb": (np.arange(n) % 2).astype(float),
            "flag": np.arange(n) % 3 == 0,
            "cat": pd.Categorical(np.where(np.arange(n) % 2 == 0, "no", "yes")),
            "s": rng.integers(0, 5, n).astype(float),
            "f": rng.integers(0, 5, n).astype(float),
            "cnt": rng.integers(0, 9, n).astype(float),
            "w": rng.uniform(0.5, 2, n),
            "word": np.array(["u", "v"] * 12, dtype=object),
            "id": np.arange(n).astype(float),
        }
    )


def test_valid_inputs_pass(df):
    check_inputs("lmer", "y ~ x + (1 | g)", df)
    check_inputs("lmer", "y ~ x + (1 | g)", df, weights="w", offset=np.zeros(len(df)))
    for resp in ("yb", "flag", "cat", "cbind(s, f)"):
        check_inputs("glmer", f"{resp} ~ x + (1 | g)", df, family="binomial")
        check_inputs("bayesglm", f"{resp} ~ x", df, family="binomial")
    check_inputs("glmer", "cnt ~ x + (1 | g)", df, family="poisson")
    check_inputs("bayesglm", "y ~ x + word", df)
    # glmer allows as many levels as observations (lme4: nlevels <= n)
    check_inputs("glmer", "cnt ~ x + (1 | id)", df, family="poisson")


def test_data_must_be_a_dataframe(df):
    with pytest.raises(DataError, match="must be a DataFrame .*, got dict"):
        check_inputs("lmer", "y ~ x + (1 | g)", df.to_dict())


def test_empty_data(df):
    with pytest.raises(DataError, match="data has 0 rows"):
        check_inputs("lmer", "y ~ x + (1 | g)", df.iloc[:0])


def test_missing_column_names_token(df):
    with pytest.raises(FormulaError, match="column 'nope' not found in data") as info:
        check_inputs("lmer", "y ~ nope + (1 | g)", df)
    assert info.value.token == "nope"


def test_formula_allow_list_applies(df):
    with pytest.raises(FormulaError) as info:
        check_inputs("lmer", "y ~ system(x) + (1 | g)", df)
    assert info.value.token == "system"


@pytest.mark.parametrize("resp,what", [("word", "a string"), ("cat", "a factor")])
def test_lmer_needs_numeric_response(df, resp, what):
    with pytest.raises(DataError, match=f"response '{resp}' is {what} column") as info:
        check_inputs("lmer", f"{resp} ~ x + (1 | g)", df)
    assert info.value.column == resp


def test_binomial_rejects_strings_and_out_of_range(df):
    with pytest.raises(DataError, match="two-level pandas Categorical") as info:
        check_inputs("glmer", "word ~ x + (1 | g)", df, family="binomial")
    assert info.value.column == "word"
    with pytest.raises(DataError, match="0 <= y <= 1") as info:
        check_inputs("bayesglm", "cnt ~ x", df, family="binomial")
    assert info.value.column == "cnt"


def test_cbind_needs_non_negative_counts(df):
    df.loc[3, "f"] = -1
    with pytest.raises(DataError, match="non-negative counts") as info:
        check_inputs("glmer", "cbind(s, f) ~ x + (1 | g)", df, family="binomial")
    assert info.value.column == "cbind(s, f)"


def test_poisson_negative_response(df):
    with pytest.raises(DataError, match="negative values") as info:
        check_inputs("glmer", "y ~ x + (1 | g)", df, family="poisson")
    assert info.value.column == "y"


def test_grouping_factor_with_one_level_after_na_omit(df):
    # 'b' .. 'f' rows all have a missing response, so only level 'a' is left
    df.loc[4:, "y"] = np.nan
    with pytest.raises(DataError, match="grouping factor 'g' has only 1 level") as info:
        check_inputs("lmer", "y ~ x + (1 | g)", df)
    assert "needs at least 2" in str(info.value)
    assert info.value.column == "g"


def test_lmer_levels_must_be_fewer_than_observations(df):
    with pytest.raises(DataError, match="number of levels of each grouping factor") as info:
        check_inputs("lmer", "y ~ x + (1 | id)", df)
    assert "24 levels for 24 observations" in str(info.value)
    assert info.value.column == "id"


def test_lmer_random_effects_must_be_fewer_than_observations(df):
    # 12 levels x 2 coefficients = 24 random effects for 24 observations
    df["g12"] = np.repeat(np.arange(12), 2).astype(float)
    with pytest.raises(DataError) as info:
        check_inputs("lmer", "y ~ x + (x | g12)", df)
    # lme4's own wording (checked with Rscript on lme4 1.1-31)
    assert str(info.value) == (
        "number of observations (=24) <= number of random effects (=24) for term (x | g12); "
        "the random-effects parameters and the residual variance (or scale parameter) are "
        "probably unidentifiable"
    )
    assert info.value.column == "g12"
    check_inputs("glmer", "yb ~ x + (x | g12)", df, family="binomial")  # glmer allows n == q


def test_interaction_grouping_factor_levels(df):
    with pytest.raises(DataError, match="grouping factor 'g:id'"):
        check_inputs("lmer", "y ~ x + (1 | g:id)", df)


@pytest.mark.parametrize(
    "kw,argument,words",
    [
        ({"weights": "wt"}, "wt", "weights='wt' is not a column of data"),
        ({"offset": "off"}, "off", "offset='off' is not a column of data"),
        ({"weights": np.ones(5)}, "weights", "weights has 5 value(s) but data has 24 rows"),
        ({"offset": [0.0] * 30}, "offset", "offset has 30 value(s) but data has 24 rows"),
        ({"weights": "word"}, "word", "weights column 'word' must be numeric"),
    ],
)
def test_weights_offset_arguments(df, kw, argument, words):
    with pytest.raises(DataError) as info:
        check_inputs("lmer", "y ~ x + (1 | g)", df, **kw)
    assert words in str(info.value)
    assert info.value.column == argument


def test_negative_and_infinite_weights_name_rows(df):
    w = np.ones(len(df))
    w[[2, 9]] = -1.0
    with pytest.raises(DataError, match=r"negative in 2 row\(s\) \(positions 2, 9\)") as info:
        check_inputs("bayesglm", "y ~ x", df, weights=w)
    assert info.value.column == "weights"
    w[[2, 9]] = [1.0, np.inf]
    with pytest.raises(DataError, match=r"infinite in 1 row\(s\) \(positions 9\)"):
        check_inputs("lmer", "y ~ x + (1 | g)", df, weights=w)
    off = np.zeros(len(df))
    off[4] = -np.inf
    with pytest.raises(DataError, match="offset has infinite values") as info:
        check_inputs("lmer", "y ~ x + (1 | g)", df, offset=off)
    assert info.value.column == "offset"


def test_missing_weights_only_drop_rows(df):
    w = np.ones(len(df))
    w[:3] = np.nan
    check_inputs("lmer", "y ~ x + (1 | g)", df, weights=w)


def test_all_rows_dropped(df):
    df["x"] = np.nan
    with pytest.raises(DataError, match="all 24 rows have missing values"):
        check_inputs("lmer", "y ~ x + (1 | g)", df)


def test_constant_response(df):
    df["y"] = 3.0
    with pytest.raises(DataError, match="response 'y' is constant") as info:
        check_inputs("lmer", "y ~ x + (1 | g)", df)
    assert "-Inf" in str(info.value)  # what lme4 1.1-31 does (checked with Rscript)
    assert info.value.column == "y"
    df["yb"] = 1.0
    with pytest.raises(DataError, match="Response is constant"):
        check_inputs("glmer", "yb ~ x + (1 | g)", df, family="binomial")
    check_inputs("bayesglm", "yb ~ x", df, family="binomial")  # glm fits it (prior keeps it finite)


@pytest.mark.parametrize(
    "model,family,words",
    [
        ("glmer", "gamma", "R spells it 'Gamma'"),
        ("glmer", "negbin", "unknown family 'negbin' for glmer"),
        ("bayesglm", "foo", "unknown family 'foo' for bayesglm"),
        ("lmer", "poisson", "lmer fits a gaussian model"),
    ],
)
def test_unknown_family(df, model, family, words):
    formula = "cnt ~ x + (1 | g)" if model != "bayesglm" else "cnt ~ x"
    with pytest.raises(ArgumentError) as info:
        check_inputs(model, formula, df, family=family)
    assert words in str(info.value)
    assert info.value.argument == "family"


def test_unknown_link(df):
    with pytest.raises(ArgumentError, match="link 'logit' is not available for family 'poisson'"):
        check_inputs("glmer", "cnt ~ x + (1 | g)", df, family="poisson", link="logit")
    check_inputs("glmer", "yb ~ x + (1 | g)", df, family="binomial", link="probit")


def test_unknown_model(df):
    with pytest.raises(ArgumentError, match="unknown model 'lm'"):
        check_inputs("lm", "y ~ x", df)


@pytest.mark.parametrize(
    "argument,value",
    [
        ("prior_scale", 0.0),
        ("prior_scale", [2.5, -1.0]),
        ("prior_scale_for_intercept", -10.0),
        ("prior_df", 0.0),
        ("prior_df_for_intercept", -1.0),
        ("min_prior_scale", 0.0),
        ("epsilon", 0.0),
        ("dispersion", -1.0),
        ("prior_scale", float("nan")),
        ("min_prior_scale", float("inf")),
        ("prior_mean", float("nan")),
        ("prior_scale", "wide"),
    ],
)
def test_bayesglm_args_rejected(argument, value):
    with pytest.raises(ArgumentError) as info:
        check_bayesglm_args(**{argument: value})
    assert info.value.argument == argument
    assert argument in str(info.value)


def test_bayesglm_flat_prior_accepted():
    # arm accepts prior.scale = Inf (a flat prior on those coefficients); so do we.
    check_bayesglm_args(prior_scale=float("inf"), prior_scale_for_intercept=float("inf"))


@pytest.mark.parametrize("maxit", [0, -3, 2.5, True])
def test_bayesglm_maxit(maxit):
    with pytest.raises(ArgumentError, match="maxit must be an integer >= 1") as info:
        check_bayesglm_args(maxit=maxit)
    assert info.value.argument == "maxit"


def test_bayesglm_defaults_pass():
    check_bayesglm_args(
        prior_mean=0.0,
        prior_scale=None,
        prior_df=1.0,
        prior_mean_for_intercept=0.0,
        prior_scale_for_intercept=None,
        prior_df_for_intercept=1.0,
        min_prior_scale=1e-12,
        scaled=True,
        drop_baseline=True,
        maxit=100,
        epsilon=1e-8,
        dispersion=None,
    )
    check_bayesglm_args(prior_df=float("inf"), prior_scale=[1.0, 2.0])  # Inf df: normal prior


@pytest.mark.parametrize(
    "call",
    [
        lambda d: mixbridge.lmer("y ~ x + system(x) + (1 | g)", d, engine="r"),
        lambda d: mixbridge.glmer("yb ~ x + `x` + (1 | g)", d, engine="r"),
        lambda d: mixbridge.bayesglm("y ~ x + eval(x)", d, engine="r"),
        lambda d: mixbridge.lmer_objective("y ~ x; q() + (1 | g)", d, theta=[1.0], engine="r"),
    ],
)
def test_public_calls_reject_before_any_engine(df, call):
    # the allow-list runs in the API before the R engine is even imported
    with pytest.raises(FormulaError):
        call(df)


# Each rejection above (and the shared checks below) mirrors an lme4/glm/arm error: R itself
# refuses these inputs (run live), so the checks never block a model R would fit. The deliberate
# differences are degenerate lme4 fits we refuse to produce: a constant lmer response (REML
# criterion -Inf) and a zero lmer weight (criterion +Inf, reported as a fit); and labels R would
# merge (tests/test_bridge_columns.py).
R_REFUSALS = r"""
suppressMessages({library(lme4); library(jsonlite)})
d <- read.csv(commandArgs(trailingOnly = TRUE)[1], stringsAsFactors = FALSE)
d$cat <- factor(d$cat)
run <- function(expr) tryCatch({force(expr); "ok"}, error = function(e) conditionMessage(e))
one <- d; one$y[5:nrow(one)] <- NA
neg <- rep(1, nrow(d)); neg[3] <- -1
const <- d; const$y <- 3
g12 <- d; g12$g12 <- rep(seq_len(12), each = 2)
out <- list(
  one_level = run(lmer(y ~ x + (1 | g), one)),
  nlev_eq_n = run(lmer(y ~ x + (1 | id), d)),
  n_le_q = run(lmer(y ~ x + (x | g12), g12)),
  string_response = run(lmer(word ~ x + (1 | g), d)),
  factor_response = run(lmer(cat ~ x + (1 | g), d)),
  glmer_constant = run(glmer(yb ~ x + (1 | g), transform(d, yb = 1), family = binomial)),
  binomial_range = run(glmer(cnt ~ x + (1 | g), d, family = binomial)),
  poisson_negative = run(glmer(y ~ x + (1 | g), d, family = poisson)),
  negative_weights = run(lmer(y ~ x + (1 | g), d, weights = neg)),
  weights_length = run(lmer(y ~ x + (1 | g), d, weights = rep(1, 5))),
  all_na = run(lmer(y ~ x + (1 | g), transform(d, x = NA_real_))),
  inf_covariate = run(lmer(y ~ x + (1 | g), transform(d, x = ifelse(seq_along(x) == 3, Inf, x)))),
  inf_covariate_glm = run(arm::bayesglm(y ~ x, data = transform(d, x = 1 / (x - x[2])))),
  glmer_zero_weights = run(glmer(yb ~ x + (1 | g), d, family = binomial, weights = 0 * w)),
  lmer_zero_weights = run(lmer(y ~ x + (1 | g), d, weights = 0 * w)),
  bayesglm_zero_weights = run(arm::bayesglm(y ~ x, data = d, weights = 0 * w)),
  nagq_two_terms = run(glmer(yb ~ x + (x || g), d, family = binomial, nAGQ = 3)),
  prior_length = run(arm::bayesglm(y ~ x + g, data = d, prior.scale = c(1, 2, 3))),
  poly_degree = run(poly(d$x^7, 8)),
  lmer_constant = REMLcrit(suppressWarnings(lmer(y ~ x + (1 | g), const))),
  lmer_one_zero_weight = local({
    w0 <- d$w; w0[4] <- 0
    fit <- suppressWarnings(lmer(y ~ x + (1 | g), d, weights = w0))
    list(deviance = REMLcrit(fit), code = fit@optinfo$conv$opt)
  })
)
cat(toJSON(out, auto_unbox = TRUE))
"""


def test_lme4_refuses_what_the_checks_refuse(needs_r, df, tmp_path):
    import json
    import subprocess

    data = df.drop(columns=["flag"]).assign(cat=df["cat"].astype(str))
    csv = tmp_path / "d.csv"
    data.to_csv(csv, index=False)
    script = tmp_path / "r.R"
    script.write_text(R_REFUSALS)
    out = subprocess.run(
        ["Rscript", "--vanilla", str(script), str(csv)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res.pop("lmer_constant") == "-Inf"
    # one zero weight: lme4 "fits" at an infinite REML criterion (we refuse, like a constant y)
    assert res.pop("lmer_one_zero_weight")["deviance"] == "Inf"
    # every other case is an error in R
    assert all(msg != "ok" for msg in res.values()), res
    assert res["one_level"] == "grouping factors must have > 1 sampled level"
    assert (
        "number of levels of each grouping factor must be < number of observations"
        in (res["nlev_eq_n"])
    )
    assert "number of observations (=24) <= number of random effects (=24)" in res["n_le_q"]
    assert res["glmer_constant"] == "Response is constant"


# ---------------------------------------------------------------------------------------------
# Arguments are taken strictly, and every engine gets the same checks (issue 11, item 5)

ENGINES = ["python", "r"]  # the checks run in the API: R is never reached by these calls


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("value", ["false", "FALSE", "no", [False], 0, 1, None, np.array([True])])
def test_flags_are_true_or_false_only(df, engine, value):
    """reml="false", "FALSE", "no" and [False] all fitted REML on every engine."""
    calls = {
        "reml": lambda: mixbridge.lmer("y ~ x + (1 | g)", df, reml=value, engine=engine),
        "reml ": lambda: mixbridge.lmer_objective(
            "y ~ x + (1 | g)", df, theta=[1.0], reml=value, engine=engine
        ),
        "scaled": lambda: mixbridge.bayesglm("y ~ x", df, scaled=value, engine=engine),
        "drop_baseline": lambda: mixbridge.bayesglm(
            "y ~ x + g", df, drop_baseline=value, engine=engine
        ),
    }
    for name, call in calls.items():
        with pytest.raises(ArgumentError, match="must be True or False") as info:
            call()
        assert info.value.argument == name.strip()


def test_numpy_bools_are_flags(df):
    fit = mixbridge.lmer("y ~ x + (1 | g)", df, reml=np.False_)
    assert fit.reml is False and fit.reml_criterion is None
    bayes = mixbridge.bayesglm("y ~ x", df, scaled=np.bool_(False))
    assert bayes.prior_scale[1] == 2.5  # unscaled: arm's default scale as given


def test_predict_flag(df):
    fit = mixbridge.lmer("y ~ x + (1 | g)", df)
    with pytest.raises(ArgumentError, match="allow_new_levels must be True or False"):
        fit.predict(df, allow_new_levels="no")
    with pytest.raises(ArgumentError, match="did you mean 'allow_new_levels'") as info:
        fit.predict(df, allow_new_level=True)
    assert info.value.argument == "allow_new_level"


@pytest.mark.parametrize(
    "call, key, hint",
    [
        (lambda d: mixbridge.lmer("y ~ x + (1 | g)", d, REML=False), "REML", "reml"),
        (lambda d: mixbridge.glmer("yb ~ x + (1 | g)", d, nAGQ=2), "nAGQ", "nagq"),
        (lambda d: mixbridge.bayesglm("y ~ x", d, prior_scales=1.0), "prior_scales", "prior_scale"),
        (lambda d: mixbridge.lmer_objective("y ~ x + (1 | g)", d, thetas=[1]), "thetas", "theta"),
        (lambda d: mixbridge.glmer_objective("yb ~ x + (1 | g)", d, [1], [0, 0], fam="x"), "fam",
         "family"),
        (lambda d: mixbridge.compare(None, None, tolerence="x"), "tolerence", "tolerance"),
    ],
)  # fmt: skip
def test_unknown_keywords_are_argument_errors(df, call, key, hint):
    """A mistyped keyword was a raw TypeError."""
    with pytest.raises(ArgumentError, match=f"did you mean '{hint}'") as info:
        call(df)
    assert info.value.argument == key


def test_missing_argument_is_an_argument_error(df):
    with pytest.raises(ArgumentError, match="data"):
        mixbridge.lmer("y ~ x + (1 | g)")


@pytest.mark.parametrize("engine", ENGINES)
def test_family_none_is_named(df, engine):
    """family=None read "unsupported family ''" on the R engine."""
    for call in (
        lambda: mixbridge.glmer("yb ~ x + (1 | g)", df, family=None, engine=engine),
        lambda: mixbridge.bayesglm("yb ~ x", df, family=None, engine=engine),
        lambda: mixbridge.glmer_objective(
            "yb ~ x + (1 | g)", df, [1.0], [0.0, 0.0], family=None, engine=engine
        ),
    ):
        with pytest.raises(ArgumentError, match="family must be a family name .* got None"):
            call()


@pytest.mark.parametrize("engine", ENGINES)
def test_two_dimensional_weights_message(df, engine):
    """A (n, 1) weights array read "weights has 24 value(s) but data has 24 rows"."""
    with pytest.raises(DataError, match=r"one-dimensional .* shape \(24, 1\)") as info:
        mixbridge.lmer("y ~ x + (1 | g)", df, weights=np.ones((len(df), 1)), engine=engine)
    assert info.value.column == "weights"


@pytest.mark.parametrize("engine", ENGINES)
def test_same_checks_before_every_engine(df, engine):
    """These were R errors (or a silent non-converged lme4 fit) on the R engine and Python
    errors (or a LinAlgError) on the Python one; now one check before any engine."""
    inf_x = df.assign(x=np.where(np.arange(len(df)) == 3, np.inf, df["x"]))
    w_one_zero = df["w"].to_numpy().copy()
    w_one_zero[4] = 0.0
    zeros = np.zeros(len(df))
    cases = [
        (lambda: mixbridge.lmer("y ~ x + (1 | g)", inf_x, engine=engine), DataError, "x",
         r"variable 'x' has infinite values in 1 row\(s\) \(positions 3\)"),
        (lambda: mixbridge.glmer("yb ~ log(x + 5) + (1 | g)", inf_x, engine=engine), DataError,
         "log(x + 5)", "infinite values"),
        (lambda: mixbridge.bayesglm("y ~ x", inf_x, engine=engine), DataError, "x",
         "infinite values"),
        (lambda: mixbridge.lmer("y ~ 1 + (x | g)", inf_x, engine=engine), DataError, "x",
         "infinite values"),
        (lambda: mixbridge.lmer("y ~ x + (1 | g)", df, weights=w_one_zero, engine=engine),
         DataError, "weights", r"1 zero weight\(s\)"),
        (lambda: mixbridge.lmer("y ~ x + (1 | g)", df, weights=zeros, engine=engine),
         DataError, "weights", "zero weight"),
        (lambda: mixbridge.glmer("yb ~ x + (1 | g)", df, weights=zeros, engine=engine),
         DataError, "weights", "all 24 weights of the rows used are zero"),
        (lambda: mixbridge.bayesglm("y ~ x", df, weights=zeros, engine=engine), DataError,
         "weights", "all 24 weights"),
        (lambda: mixbridge.glmer("yb ~ x + (x || g)", df, nagq=3, engine=engine),
         ArgumentError, "nagq", "single, scalar random-effects term"),
        (lambda: mixbridge.glmer("yb ~ x + (1 | g) + (1 | word)", df, nagq=3, engine=engine),
         ArgumentError, "nagq", "single, scalar random-effects term"),
        (lambda: mixbridge.bayesglm("y ~ x + g", df, prior_scale=[1, 2, 3], engine=engine),
         ArgumentError, "prior_scale", "invalid length for prior_scale: got 3, expected 6"),
        (lambda: mixbridge.bayesglm(
            "y ~ x + g", df, prior_mean=[0.0] * 6, drop_baseline=False, engine=engine),
         ArgumentError, "prior_mean", "expected 7"),
        (lambda: mixbridge.lmer_objective("y ~ x + (x | g)", df, [1.0, 0.0], engine=engine),
         ArgumentError, "theta", "theta must have length 3"),
        (lambda: mixbridge.bayesglm("y ~ 0", df, engine=engine), ArgumentError, "formula",
         "no coefficients"),
    ]  # fmt: skip
    for call, kind, column, words in cases:
        with pytest.raises(kind, match=words) as info:
            call()
        got = getattr(info.value, "column", None) or getattr(info.value, "argument", None)
        assert got == column, words
    # glmer with some zero weights is fine on both (glm drops those rows' contributions)
    w = df["w"].to_numpy().copy()
    w[:3] = 0.0
    if engine == "python":
        assert mixbridge.glmer("yb ~ x + (1 | g)", df, weights=w).nobs == len(df)


def test_prior_lengths_that_fit_are_accepted(df):
    fit = mixbridge.bayesglm("y ~ x + g", df, prior_scale=[1.0] * 6)
    assert len(fit.coef) == 7
    fit = mixbridge.bayesglm("y ~ x + g", df, prior_scale=[1.0] * 7, drop_baseline=False)
    assert len(fit.coef) == 8


@pytest.mark.parametrize("engine", ENGINES)
def test_poly_degree_rank_is_checked_like_r(needs_r, engine):
    """R's poly() refuses a degree whose powers of x are numerically dependent; the Python
    engine fitted it (|fixef| up to 9.3e5 at degree 50). Ranks and refusals from R, live."""
    from mixbridge import bridge

    rng = np.random.default_rng(2)
    n = 300
    g = np.repeat(np.arange(30), 10)
    data = pd.DataFrame(
        {"e": rng.exponential(10.0, n), "g": g, "y": rng.normal(size=n) + rng.normal(size=30)[g]}
    )
    info = bridge.describe_data(data)  # (warm the session; the values R holds are ours)
    assert [c["name"][0] for c in info] == ["e", "g", "y"]
    ranks = _r_poly_ranks(data["e"].to_numpy(), range(8, 25))
    refused = [d for d, r in ranks.items() if r < d]  # R's own rule
    full = [d for d, r in ranks.items() if r == d + 1]
    assert refused and full  # the sweep covers both sides
    for d in (min(refused), min(refused) + 3):
        with pytest.raises(DataError, match="'degree' must be less than number of unique points"):
            mixbridge.lmer(f"y ~ poly(e, {d}) + (1 | g)", data, engine=engine)
    # where R's qr() finds full rank, both engines fit
    fit = mixbridge.lmer(f"y ~ poly(e, {max(full)}) + (1 | g)", data, engine=engine)
    assert len(fit.fixef) == max(full) + 1
    # R's poly() itself refuses the first refused degree (through the engine, past our check)
    with pytest.raises(Exception, match="'degree' must be less than number of unique points"):
        bridge.lmer(
            f"y ~ poly(e, {min(refused)}) + (1 | g)", data, reml=True, weights=None, offset=None,
            control={},
        )  # fmt: skip


def _r_poly_ranks(x: np.ndarray, degrees: range) -> dict[int, int]:
    """qr(outer(x - mean(x), 0:d, "^"))$rank for each degree, computed by R."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/x.bin"
        np.asarray(x, dtype="<f8").tofile(path)
        script = (
            f"x <- readBin('{path}', 'double', n = {len(x)}, size = 8, endian = 'little'); "
            f"d <- {degrees.start}:{degrees.stop - 1}; "
            "r <- sapply(d, function(k) qr(outer(x - mean(x), 0:k, '^'))$rank); "
            "cat(jsonlite::toJSON(r))"
        )
        out = subprocess.run(
            ["Rscript", "--vanilla", "-e", script], capture_output=True, text=True, timeout=120
        )
    assert out.returncode == 0, out.stderr[-1000:]
    return dict(zip(degrees, json.loads(out.stdout), strict=True))
