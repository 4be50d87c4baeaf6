"""The formula allow-list: everything outside it is rejected with the offending token."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbridge.errors import FormulaError
from mixbridge.formula import validate_formula
from mixbridge.formula.parse import deparse, parse_formula

COLS = ["y", "x", "z", "g", "h", "s", "f", "t"]

ACCEPTED = [
    ("y ~ x + (1 | g)", "lmer"),
    ("y ~ x * z + (x || g)", "lmer"),
    ("y ~ 0 + x + (1 | g/h)", "lmer"),
    ("y ~ x - 1 + (1 | g:h)", "lmer"),
    ("log(y) ~ I(x^2) + log(x) + exp(z) + sqrt(t) + (1 | g)", "lmer"),
    ("y ~ poly(x, 2) + scale(z) + factor(h) + (0 + x | g)", "lmer"),
    ("y ~ x + offset(log(t)) + (1 | g)", "glmer"),
    ("cbind(s, f) ~ x + (1 | g)", "glmer"),
    ("cbind(s, t - s) ~ x", "bayesglm"),
    ("y ~ (x + z)^2 + x %in% g", "bayesglm"),
    ("y ~ I(-x / 2 + 1e-3 * z)", "bayesglm"),
    ("y~x+(1|g)", "lmer"),
]


@pytest.mark.parametrize("formula,model", ACCEPTED)
def test_accepts_allowed_formulas(formula, model):
    validate_formula(formula, COLS, model)


REJECTED = [
    # (formula, model, token, words in the message)
    ("y ~ system(x) + (1 | g)", "lmer", "system", "not allowed"),
    ("y ~ `x` + (1 | g)", "lmer", "`x`", "backtick"),
    ("y ~ x; q() + (1 | g)", "lmer", ";", "not allowed"),
    ("y ~ (a <- x) + (1 | g)", "lmer", "<-", "assignment"),
    ("y ~ (x <<- 1) + (1 | g)", "lmer", "<<-", "assignment"),
    ("y ~ (x -> a) + (1 | g)", "lmer", "->", "assignment"),
    ("y ~ poly(x, degree = 2) + (1 | g)", "lmer", "=", "not allowed"),
    ("y ~ x == 1 + (1 | g)", "lmer", "==", "not allowed"),
    ("y ~ base::log(x) + (1 | g)", "lmer", "::", "namespace"),
    ("y ~ stats:::poly(x, 2) + (1 | g)", "lmer", ":::", "namespace"),
    ("y ~ d$x + (1 | g)", "lmer", "$", "not allowed"),
    ("y ~ d@x + (1 | g)", "lmer", "@", "not allowed"),
    ('y ~ x + "a" + (1 | g)', "lmer", '"a"', "string"),
    ("y ~ x + 'a' + (1 | g)", "lmer", "'a'", "string"),
    ("y ~ foo(x) + (1 | g)", "lmer", "foo", "not allowed"),
    ("y ~ eval(x) + (1 | g)", "lmer", "eval", "not allowed"),
    ("y ~ nope + (1 | g)", "lmer", "nope", "not found in data; available: y, x"),
    ("y ~ x + (1 | nope)", "lmer", "nope", "not found in data"),
    ("nope ~ x + (1 | g)", "lmer", "nope", "not found in data"),
    ("y ~ x + (1 | g)", "bayesglm", "|", "cannot have random-effects"),
    ("y ~ x %o% z + (1 | g)", "lmer", "%o%", "operator"),
    ("y ~ x %% z + (1 | g)", "lmer", "%%", "operator"),
    ("y ~ I(x:z) + (1 | g)", "lmer", ":", "inside a function argument"),
    ("y ~ log(x | g)", "bayesglm", "|", "inside a function argument"),
    ("y ~ TRUE + (1 | g)", "lmer", "TRUE", "keyword"),
    ("y ~ function + (1 | g)", "lmer", "function", "keyword"),
    ("y ~ x + 1L + (1 | g)", "lmer", "1L", "number"),
    ("y ~ x[1] + (1 | g)", "lmer", "[", "not allowed"),
    ("y ~ {x} + (1 | g)", "lmer", "{", "not allowed"),
    ("y ~ !x + (1 | g)", "lmer", "!", "not allowed"),
    ("y ~ x & z + (1 | g)", "lmer", "&", "not allowed"),
    ("y ~ x < z + (1 | g)", "lmer", "<", "not allowed"),
    ("y ~ x ~ z", "lmer", "~", "more than one"),
    ("y ~ log(offset(x)) + (1 | g)", "lmer", "offset", "nested"),
    ("y ~ x:offset(t) + (1 | g)", "lmer", "offset", "top-level"),
    ("y ~ poly(x, 2.5) + (1 | g)", "lmer", "2.5", "positive integer"),
    ("y ~ poly(x) + (1 | g)", "lmer", "poly", "argument"),
    ("y ~ log(x, 2) + (1 | g)", "lmer", "log", "argument"),
    ("y ~ x + (1 | factor(g))", "lmer", "factor", "grouping factor"),
    ("y ~ x + (1 | log(h))", "lmer", "log", "grouping factor"),
    ("cbind(s, f) ~ x + (1 | g)", "lmer", "cbind", "binomial"),
    ("y ~ cbind(s, f) + (1 | g)", "glmer", "cbind", "response"),
    ("cbind(s, f, t) ~ x + (1 | g)", "glmer", "cbind", "exactly two"),
    ("y ~ x:(1 | g)", "lmer", "|", "top-level summand"),
    ("y ~ 2 + x", "bayesglm", "2", "not a term"),
    ("y ~ .", "bayesglm", ".", "all other columns"),
]


@pytest.mark.parametrize("formula,model,token,words", REJECTED)
def test_rejects_with_token(formula, model, token, words):
    with pytest.raises(FormulaError) as info:
        validate_formula(formula, COLS, model)
    assert info.value.token == token
    assert words in str(info.value)


@pytest.mark.parametrize("model", ["lmer", "glmer"])
def test_mixed_models_need_a_random_term(model):
    with pytest.raises(FormulaError, match="has no random-effects term") as info:
        validate_formula("y ~ x + z", COLS, model)
    assert "No random effects terms specified in formula" in str(info.value)
    assert "bayesglm or statsmodels OLS" in str(info.value)


@pytest.mark.parametrize("text", ["y + x", "y", "", "   "])
def test_formula_without_tilde(text):
    with pytest.raises(FormulaError, match="no '~'"):
        validate_formula(text, COLS, "bayesglm")


def test_formula_without_response():
    with pytest.raises(FormulaError, match="no response"):
        validate_formula("~ x + (1 | g)", COLS, "lmer")


def test_non_string_formula():
    with pytest.raises(FormulaError, match="must be a string"):
        validate_formula(42, COLS, "lmer")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("yxg~+-*/^:|()%in,1 0.`'\";$@=<!_[]{}#\\e")), max_size=30)
)
def test_fuzz_only_formula_errors(text):
    """Arbitrary input either validates or raises FormulaError, never anything else."""
    try:
        validate_formula(text, ["y", "x", "g", "in"], "bayesglm")
    except FormulaError:
        pass


@pytest.mark.parametrize(
    "text,expected",
    [
        ("y ~ I(x^2+3*x-1/2)", "y ~ I(x^2 + 3 * x - 1/2)"),
        ("y~a:b+(x|g)", "y ~ a:b + (x | g)"),
        ("y ~ poly(x,2)", "y ~ poly(x, 2)"),
        (
            "y ~ I(x*100000) + I(x*0.0001) + I(x*10000)",
            "y ~ I(x * 1e+05) + I(x * 1e-04) + I(x * 10000)",
        ),
        ("y ~ -1 + x", "y ~ -1 + x"),
        ("y ~ x^-1", "y ~ x^-1"),
    ],
)
def test_deparse_like_r(text, expected):
    # the R-side check of these spellings is the column-name comparison in test_formula_vs_r
    assert deparse(parse_formula(text)) == expected


def test_precedence_like_r():
    # R: %in% binds tighter than *, : tighter than %in%, unary minus looser than ^
    tree = parse_formula("y ~ a * b %in% c:d + -x^2")
    assert deparse(tree.rhs.left) == "a * b %in% c:d"
    assert deparse(tree.rhs.left.right) == "b %in% c:d"
    assert deparse(tree.rhs.left.right.right) == "c:d"
    assert deparse(tree.rhs.right.operand) == "x^2"
    # ^ is right-associative
    assert deparse(parse_formula("y ~ a^b^c").rhs.right) == "b^c"


def test_resource_limits_are_formula_errors():
    cols = [f"x{i}" for i in range(40)] + ["y"]
    many = " + ".join(cols[:40])
    # a wide model is fine
    validate_formula(f"y ~ {many}", cols, "bayesglm")
    with pytest.raises(FormulaError, match="too many terms"):
        validate_formula(f"y ~ ({many})^40", cols, "bayesglm")
    with pytest.raises(FormulaError, match="too many terms"):
        validate_formula("y ~ " + "*".join(cols[:20]), cols, "bayesglm")
    with pytest.raises(FormulaError, match="nested too deeply"):
        validate_formula("y ~ " + "(" * 3000 + "x0" + ")" * 3000, cols, "bayesglm")
    with pytest.raises(FormulaError, match="characters; at most"):
        validate_formula("y ~ " + " + ".join(["x0"] * 6000), cols, "bayesglm")
    with pytest.raises(FormulaError, match="above the supported maximum") as info:
        validate_formula("y ~ poly(x0, 100000)", cols, "bayesglm")
    assert info.value.token == "1e+05"
    # a huge power of few variables is cheap: x^1e9 = x
    validate_formula("y ~ (x0 + x1)^1000000000", cols, "bayesglm")
