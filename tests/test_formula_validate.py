"""The formula allow-list: everything outside it is rejected with the offending token."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbridge.errors import FormulaError
from mixbridge.formula import validate_formula
from mixbridge.formula.parse import deparse, parse_formula

COLS = ["y", "x", "z", "g", "h", "s", "f", "t"]
COLS += ["été", "Größe", "Жx", "中", "..", "....", "..a", "..1a"]  # names R reads as names
# names R cannot take as written (so the error is about the name, not a missing column)
COLS += ["...", "..1", "..01", "..2", "..0", "\u0661", "x\u0661", "\uff11", "x\u00b2", "\u2167"]
COLS += ["e\u0301"]

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
    # comparisons and logical operators inside I() (MASS::bacteria's idiom)
    ("y ~ x + I(z > 2) + (1 | g)", "lmer"),
    ("y ~ I(x>=1&x<=6) + I(z != 0) + I(!(x == 2)) + (1 | g)", "glmer"),
    ("y ~ I(!x > 2) + I((x > 1) * z) + I(1 - (z < -1))", "bayesglm"),
    ("I(y > 0) ~ x + (1 | g)", "glmer"),
    # non-ASCII letters are names in R (a UTF-8 locale) as in Python
    ("y ~ x + été + Größe + Жx + 中 + (1 | g)", "lmer"),
    # names R reads as ordinary symbols: only '...' and '..<digits>' are reserved
    ("y ~ .. + .... + ..a + ..1a + (1 | g)", "lmer"),
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
    ("y ~ x == 1 + (1 | g)", "lmer", "==", "only inside I()"),  # R: x == (1 + (1 | g))
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
    ("y ~ !x + (1 | g)", "lmer", "!", "only inside I()"),  # R: !(x + (1 | g))
    ("y ~ x & z + (1 | g)", "lmer", "&", "only inside I()"),
    ("y ~ x < z + (1 | g)", "lmer", "<", "only inside I()"),
    ("y ~ x + log(z > 1) + (1 | g)", "lmer", ">", "only inside I()"),
    ("y ~ x + factor(z > 1) + (1 | g)", "lmer", ">", "only inside I()"),
    ("y ~ x + !z + (1 | g)", "lmer", "!", "only inside I()"),
    # lme4's findbars reads any '|' as a random-effects bar, even inside I()
    ("y ~ I(x > 1 | z > 2) + (1 | g)", "lmer", "|", "random-effects bar"),
    ("y ~ I(x > 1 | z > 2)", "bayesglm", "|", "random-effects bar"),
    ("y ~ I(x && z) + (1 | g)", "lmer", "&&", "not allowed"),
    ("y ~ I(x > 1 || z > 2)", "bayesglm", "||", "random-effects bar"),
    # comparisons do not chain in R ('unexpected <')
    ("y ~ I(x < z < 2) + (1 | g)", "lmer", "<", "unexpected"),
    ("y ~ I(x == z != 2) + (1 | g)", "lmer", "!=", "unexpected"),
    ("y ~ I(x<-1) + (1 | g)", "lmer", "<-", "x < -1"),
    ("y ~ x |> log() + (1 | g)", "lmer", "|>", "pipe"),
    # Unicode digits are never numbers in R: a name in a UTF-8 locale, an error in C
    ("y ~ x + (\u0661 | g)", "lmer", "\u0661", "U+0661"),
    ("y ~ x\u0661 + (1 | g)", "lmer", "\u0661", "ARABIC-INDIC DIGIT ONE"),
    ("y ~ x + (\uff11 | g)", "lmer", "\uff11", "U+FF11"),
    ("y ~ x\u00b2 + (1 | g)", "lmer", "\u00b2", "SUPERSCRIPT TWO"),
    ("y ~ \u2167 + (1 | g)", "lmer", "\u2167", "U+2167"),
    ("y ~ x + I(x^\u0968) + (1 | g)", "lmer", "\u0968", "digits 0-9"),
    ("y ~ e\u0301 + (1 | g)", "lmer", "\u0301", "COMBINING ACUTE ACCENT"),
    ("y ~ x\u00a0+ (1 | g)", "lmer", "\u00a0", "NO-BREAK SPACE"),
    # R reserves '...' and '..1', '..2', ... (the arguments of a function)
    ("y ~ ... + (1 | g)", "lmer", "...", "reserved"),
    ("y ~ x + ..1 + (1 | g)", "lmer", "..1", "reserved"),
    ("y ~ x + ..01 + (1 | g)", "lmer", "..01", "reserved"),
    ("y ~ x + (1 | ..2)", "lmer", "..2", "reserved"),
    ("y ~ I(..0 > 1)", "bayesglm", "..0", "reserved"),
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
    st.text(
        alphabet=st.sampled_from(list("yxg~+-*/^:|()%in,1 0.`'\";$@=<>!&_[]{}#\\eI\u0661\u00e9")),
        max_size=30,
    )
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
    with pytest.raises(FormulaError, match="R's parser accepts at most 50"):
        validate_formula("y ~ " + "(" * 3000 + "x0" + ")" * 3000, cols, "bayesglm")
    with pytest.raises(FormulaError, match="characters; at most"):
        validate_formula("y ~ " + " + ".join(["x0"] * 6000), cols, "bayesglm")
    with pytest.raises(FormulaError, match="above the supported maximum") as info:
        validate_formula("y ~ poly(x0, 100000)", cols, "bayesglm")
    assert info.value.token == "1e+05"
    # a huge power of few variables is cheap: x^1e9 = x
    validate_formula("y ~ (x0 + x1)^1000000000", cols, "bayesglm")


def _nested(k: int, inner: str = "x") -> str:
    return "(" * k + inner + ")" * k


@pytest.mark.parametrize("model", ["bayesglm", "lmer"])
def test_brackets_nest_as_deep_as_r_parses(model):
    """R's parser keeps open brackets on a 50-deep stack ('contextstack overflow' beyond it);
    function-call parentheses count as well (test_formula_r_syntax checks R itself)."""
    bar = " + (1 | g)" if model != "bayesglm" else ""
    if model == "bayesglm":
        validate_formula(f"y ~ log({_nested(49)})", COLS, model)
        validate_formula("y ~ " + "log(" * 25 + _nested(25) + ")" * 25, COLS, model)
    else:  # lme4's own, lower limit on nested '(' (below) applies; calls do not count there
        validate_formula("y ~ " + "log(" * 34 + _nested(16) + ")" * 34 + bar, COLS, model)
    for text in ("y ~ " + _nested(51), "y ~ " + "log(" * 25 + _nested(26) + ")" * 25):
        with pytest.raises(FormulaError, match="R's parser accepts at most 50") as info:
            validate_formula(text + bar, COLS, model)
        assert info.value.token == "("


def test_lme4_grouping_parentheses_are_limited():
    """lme4's expandDoubleVerts walks each '(' twice: 2^k steps for k nested parentheses
    (16: ~4 s, 20: a minute, 25: half an hour in lmer). Deeper is refused for lmer/glmer."""
    validate_formula(f"y ~ {_nested(16)} + (1 | g)", COLS, "lmer")
    validate_formula(f"y ~ I({_nested(15)}) + (1 | g)", COLS, "glmer")
    validate_formula(f"y ~ {_nested(40)}", COLS, "bayesglm")  # arm is linear in depth
    for text in (f"y ~ {_nested(17)} + (1 | g)", f"y ~ x + ({_nested(16, '1 | g')})"):
        with pytest.raises(FormulaError, match="nests 17 parentheses") as info:
            validate_formula(text, COLS, "lmer")
        assert "lme4" in str(info.value) and info.value.token == "("


@pytest.mark.parametrize("model", ["lmer", "glmer", "bayesglm"])
def test_flat_sum_of_1000_terms_is_accepted(model):
    cols = ["y", "g"] + [f"x{i}" for i in range(1, 1001)]
    rhs = " + ".join(cols[2:]) + (" + (1 | g)" if model != "bayesglm" else "")
    text = f"y ~ {rhs}"
    validate_formula(text, cols, model)
    tree = parse_formula(text)
    assert deparse(tree) == text  # deparse walks the 1000-deep left spine without recursing
    from mixbridge.formula.parse import walk
    from mixbridge.formula.terms import expand_terms, split_bars

    assert sum(1 for _ in walk(tree.rhs)) == 2 * 1000 - 1 + (5 if model != "bayesglm" else 0)
    fixed, _ = split_bars(tree.rhs)
    assert expand_terms(fixed).labels == cols[2:]


@pytest.mark.parametrize(
    "text",
    [
        "y ~ I(" + "-" * 300 + "x)",
        "y ~ x" + "^1" * 300,
        "y ~ " + ":".join(["x"] * 400),
        "y ~ " + " - ".join(["x"] * 400),
        "y ~ I(" + "-" * 9000 + "x)",
        "y ~ " + "!" * 9000 + "x",
    ],
)
def test_deep_nesting_is_a_formula_error_not_a_recursion_error(text):
    """R's own recursive functions (terms, lme4's findbars) stop at a few hundred levels with
    'C stack usage is too close to the limit' (or crash an embedded R, whose stack check rpy2
    turns off); beyond the limit it is a FormulaError naming it, never a RecursionError."""
    with pytest.raises(FormulaError, match="nested too deeply") as info:
        validate_formula(text, COLS, "bayesglm")
    assert "at most" in str(info.value)


def test_deparse_comparisons_like_r():
    # R's deparse: spaces around comparisons and &, none after !; the R-side check of these
    # spellings is the coefficient-name comparison in test_formula_vs_r / test_formula_logical
    cases = {
        "y ~ I(week>2)": "y ~ I(week > 2)",
        "y ~ I(week>=2&week<=6)": "y ~ I(week >= 2 & week <= 6)",
        "y ~ I(!week>2)": "y ~ I(!week > 2)",
        "y ~ I(-week<=-2)": "y ~ I(-week <= -2)",
        "y ~ I(week!=2)+I(week==2.50)": "y ~ I(week != 2) + I(week == 2.5)",
        "y ~ I(!(week>2))": "y ~ I(!(week > 2))",
    }
    for text, expected in cases.items():
        assert deparse(parse_formula(text)) == expected


def test_logical_precedence_like_r():
    # R: a + !b > 1 & c is (a + !(b > 1)) & c ; !a + b is !(a + b); -!a is -(!a)
    tree = parse_formula("y ~ I(a + !b > 1 & c)").rhs.args[0]
    assert tree.op == "&" and deparse(tree.left) == "a + !b > 1"
    assert deparse(tree.left.right) == "!b > 1" and tree.left.right.op == "!"
    assert deparse(tree.left.right.operand) == "b > 1"
    assert parse_formula("y ~ I(!a + b)").rhs.args[0].op == "!"
    assert parse_formula("y ~ I(-!a)").rhs.args[0].operand.op == "!"
    # comparisons bind looser than arithmetic, tighter than !
    cmp = parse_formula("y ~ I(x^2 - 1 > z * 3)").rhs.args[0]
    assert cmp.op == ">" and deparse(cmp.left) == "x^2 - 1" and deparse(cmp.right) == "z * 3"
