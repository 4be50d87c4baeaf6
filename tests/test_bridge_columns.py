"""The R engine fits exactly the data the user passed (issue 11, item 4).

Only the columns the model uses travel to R, weights= and offset= under names no formula
variable has, and anything R would read differently from Python (a NUL in a label, two values
with one label after R's as.character) is a DataError on every engine. The references are R fits
of the same model on the clean data (live R, both transports), which the extra columns must not
change by a single bit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge import bridge
from mixbridge.errors import DataError
from mixbridge.formula import build_mixed_terms

TRANSPORTS = ["embedded", "subprocess"]
# binomial glmer with the non-integer weights: R's glm warns, as it should
pytestmark = pytest.mark.filterwarnings("ignore:non-integer #successes")


@pytest.fixture(scope="module")
def clean() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n, G = 120, 12
    g = np.repeat(np.arange(G), n // G)
    x = rng.normal(size=n)
    eta = -0.3 + 0.8 * x + rng.normal(0, 0.7, G)[g]
    return pd.DataFrame(
        {
            "y": 2.0 + x + rng.normal(0, 0.8, G)[g] + rng.normal(size=n),
            "x": x,
            "yb": (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float),
            "g": [f"g{k:02d}" for k in g],
            "w": rng.uniform(0.5, 2.0, n),
            "o": rng.normal(0, 0.2, n),
        }
    )


def _junk(clean: pd.DataFrame) -> pd.DataFrame:
    """The clean data plus columns that must not reach R: reserved-looking names holding other
    numbers, a NUL in a name (placed before x: R cut it to 'x'), duplicated and empty names,
    and a type R cannot take."""
    n = len(clean)
    junk = pd.DataFrame(
        {
            ".mb_weights": np.full(n, 7.0),
            ".mb_offset": np.full(n, 5.0),
            "x\x00evil": np.linspace(-50, 50, n),
            "": np.arange(n, dtype=float),
            "cplx": np.full(n, 1 + 2j),
        }
    )
    dup = pd.DataFrame(np.ones((n, 2)), columns=["dup", "dup"])
    return pd.concat([clean[["y", "yb"]], junk, dup, clean.drop(columns=["y", "yb"])], axis=1)


def _fits(data: pd.DataFrame, transport: str, w, o, objectives: bool = True) -> dict:
    """Every R entry point that takes data; through the subprocess transport (an Rscript
    start per call) only lmer and glmer_objective: the column encoding is the same for all."""
    kw = dict(engine="r", transport=transport)
    lm = mixbridge.lmer("y ~ x + (1 | g)", data, weights=w, offset=o, **kw)
    out = {"lmer_fixef": lm.fixef.to_numpy(), "lmer_theta": lm.theta, "lmer_fitted": lm.fitted}
    if transport == "embedded":
        gl = mixbridge.glmer("yb ~ x + (1 | g)", data, weights=w, offset=o, **kw)
        bg = mixbridge.bayesglm("y ~ x + g", data, weights=w, offset=o, **kw)
        out.update(
            glmer_fixef=gl.fixef.to_numpy(), glmer_theta=gl.theta, bayesglm_coef=bg.coef.to_numpy()
        )
        if objectives:
            out["lmer_objective"] = mixbridge.lmer_objective(
                "y ~ x + (1 | g)", data, theta=[0.7], weights=w, offset=o, **kw
            )
    if objectives:
        out["glmer_objective"] = mixbridge.glmer_objective(
            "yb ~ x + (1 | g)", data, theta=[0.6], beta=[-0.2, 0.7], weights=w, offset=o, **kw
        )
    return out


@pytest.fixture(scope="module")
def reference(needs_r, clean) -> dict:
    """The R fits on the clean data (embedded; the transports are bit-identical, see
    test_bridge_roundtrip.test_transports_identical)."""
    arrays = (clean["w"].to_numpy(), clean["o"].to_numpy())
    return {
        "column-names": _fits(clean, "embedded", "w", "o"),
        "arrays": _fits(clean, "embedded", *arrays),
        "zero-offset": _fits(clean[["y", "yb", "x", "g", "w"]], "embedded", "w", None, False),
    }


@pytest.mark.parametrize(
    "transport, given",
    [("embedded", "column-names"), ("embedded", "arrays"), ("subprocess", "column-names")],
)
def test_unused_columns_never_reach_r(needs_r, clean, reference, transport, given):
    """A user column named .mb_offset = 5 used to replace offset= (lme4's intercept -5.1
    instead of -0.1); "x\\x00evil" made lme4 fit the wrong column; duplicated names raised
    AttributeError and an empty name RModelError."""
    data = _junk(clean)
    w, o = ("w", "o") if given == "column-names" else (clean["w"].to_numpy(), clean["o"].to_numpy())
    got = _fits(data, transport, w, o)
    for key, value in got.items():
        np.testing.assert_array_equal(value, reference[given][key], err_msg=key)
    if transport == "embedded":
        # zeros as offset= is no offset, whatever a column called .mb_offset holds
        zero = _fits(data, transport, w, np.zeros(len(clean)), objectives=False)
        for key, value in reference["zero-offset"].items():
            np.testing.assert_array_equal(zero[key], value, err_msg=key)


def test_unused_columns_do_not_matter_to_the_python_engine(clean):
    data = _junk(clean)
    for call in (
        lambda d: mixbridge.lmer("y ~ x + (1 | g)", d, weights="w", offset="o").fixef,
        lambda d: mixbridge.glmer("yb ~ x + (1 | g)", d, weights="w", offset="o").fixef,
        lambda d: mixbridge.bayesglm("y ~ x + g", d, weights="w", offset="o").coef,
    ):
        np.testing.assert_array_equal(call(data).to_numpy(), call(clean).to_numpy())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_formula_variable_named_like_the_reserved_columns(needs_r, clean, transport):
    """A model that itself uses columns called .mb_weights and .mb_offset, with weights= and
    offset= given too: the same fit as with those columns under ordinary names."""
    kw = dict(weights="w", offset="o", engine="r")
    renamed = clean.assign(**{".mb_weights": clean["x"], ".mb_offset": clean["x"] ** 2})
    plain = clean.assign(a=clean["x"], b=clean["x"] ** 2)
    models = [
        (mixbridge.lmer, "y ~ {} + {} + (1 | g)", {}),
        (mixbridge.glmer, "yb ~ {} + {} + (1 | g)", {}),
        (mixbridge.bayesglm, "y ~ {} + {} + g", {"dispersion": 0.5}),
    ]
    # the R code is shared; through Rscript (a start per call) the lmer fit shows it
    for model, f, extra in models if transport == "embedded" else models[:1]:
        got = model(
            f.format(".mb_weights", ".mb_offset"), renamed, **kw, **extra, transport=transport
        )
        ref = model(f.format("a", "b"), plain, **kw, **extra)  # embedded: bit-identical
        coef_got = got.coef if hasattr(got, "coef") else got.fixef
        coef_ref = ref.coef if hasattr(ref, "coef") else ref.fixef
        np.testing.assert_array_equal(coef_got.to_numpy(), coef_ref.to_numpy())
        assert list(coef_got.index[1:3]) == [".mb_weights", ".mb_offset"]


@pytest.mark.parametrize("engine", ["python", "r"])
@pytest.mark.parametrize("where", ["group", "fixed factor", "categorical"])
def test_nul_in_a_label_is_a_data_error(clean, engine, where):
    """R cuts strings at NUL: labels g\\x00a and g\\x00b were one group in lme4, two in Python."""
    data = clean.copy()
    labels = np.where(np.arange(len(data)) < 60, "g\x00a", "g\x00b")
    if where == "group":
        data["g"] = labels
        formula = "y ~ x + (1 | g)"
    elif where == "fixed factor":
        data["h"] = labels
        formula = "y ~ x + h + (1 | g)"
    else:
        data["h"] = pd.Categorical(labels)
        formula = "y ~ x + h + (1 | g)"
    with pytest.raises(DataError, match="NUL") as info:
        mixbridge.lmer(formula, data, engine=engine)
    assert info.value.column == ("g" if where == "group" else "h")
    assert "g\\x00a" in str(info.value)


def _collisions(clean: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, str, str]]:
    n = len(clean)
    k = np.arange(n) % 12
    # 0.1 + 0.2 and 0.3 are distinct doubles; R's factor labels (15 significant digits) are both
    # "0.3". Ids above 2^31 travel as doubles: 1e15 + 1 is labelled "1e+15" like 1e15 itself.
    tenths = np.where(k == 0, 0.1 + 0.2, np.where(k == 1, 0.3, k.astype(float)))
    big = (10**15 + k).astype(np.int64)
    # "p:q" x "r" and "p" x "q:r" both paste to "p:q:r"; the other rows are ordinary groups
    a = np.where(k < 2, "p:q", np.where(k < 4, "p", "a" + k.astype(str)))
    b = np.where(k < 2, "r", np.where(k < 4, "q:r", "z"))
    return {
        "numeric-group": (clean.assign(g=tenths), "y ~ x + (1 | g)", "g"),
        "big-int-group": (clean.assign(g=big), "y ~ x + (1 | g)", "g"),
        "interaction": (clean.assign(a=a, b=b), "y ~ x + (1 | a:b)", "a:b"),
        "numeric-factor": (clean.assign(h=tenths), "y ~ x + factor(h) + (1 | g)", "factor(h)"),
    }


@pytest.mark.parametrize("case", ["numeric-group", "big-int-group", "interaction"])
def test_r_merges_groups_python_kept_apart(needs_r, clean, case):
    """Live R: lme4 puts the rows of values that share a label into one group (so R and Python
    fitted different models, θ 0.81 against 1.06 in the issue). Now both engines refuse."""
    data, formula, column = _collisions(clean)[case]
    py_groups = len(build_mixed_terms(formula, data).reterms[0].levels)
    r_fit = bridge.lmer(formula, data, reml=True, weights=None, offset=None, control={})
    assert r_fit.ngroups[column] < py_groups  # R merged what Python kept apart
    for engine in ("python", "r"):
        with pytest.raises(DataError, match="share the level label") as info:
            mixbridge.lmer(formula, data, engine=engine)
        assert info.value.column == column


@pytest.mark.parametrize("engine", ["python", "r"])
def test_numeric_factor_label_collision_is_a_data_error(clean, engine):
    data, formula, column = _collisions(clean)["numeric-factor"]
    with pytest.raises(DataError, match="'0.3'") as info:
        mixbridge.lmer(formula, data, engine=engine)
    assert info.value.column == column


def test_distinct_labels_still_fit(needs_r, clean):
    """Numbers R labels distinctly stay separate groups on both engines."""
    k = np.arange(len(clean)) % 12
    data = clean.assign(g=0.1 * k + 0.25)  # 0.25, 0.35, ...: 15 digits tell them apart
    for engine in ("python", "r"):
        assert mixbridge.lmer("y ~ x + (1 | g)", data, engine=engine).ngroups == {"g": 12}
