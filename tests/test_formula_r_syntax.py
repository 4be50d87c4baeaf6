"""The formula allow-list against R itself: what R parses, how it names logical columns, and fits
with comparisons inside I() on both engines.

The validator's limits are R's: characters R reads as names or rejects (never as numbers), R's
reserved `...` and `..1`, the 50-deep bracket stack of R's parser, and the nesting R's recursive
formula code (terms, lme4's findbars) can take. Everything here asks R live.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.errors import FormulaError
from mixbridge.formula import validate_formula
from mixbridge.formula.parse import parse_formula
from mixbridge.formula.validate import MAX_R_DEPTH, R_MAX_BRACKETS, r_depth


def _rscript(code: str, *args: str, locale: str = "C.UTF-8") -> dict:
    """Run R code that writes JSON to the path in commandArgs()[1]; return the parsed JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        script, out = Path(tmp) / "run.R", Path(tmp) / "out.json"
        script.write_text(code, encoding="utf-8")
        env = {**os.environ, "LC_ALL": locale}
        proc = subprocess.run(
            ["Rscript", "--vanilla", str(script), str(out), *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(out.read_text(encoding="utf-8"))


PARSE_KIND = r"""
args <- commandArgs(trailingOnly = TRUE)
texts <- jsonlite::fromJSON(args[2])
kind <- vapply(texts, function(s) tryCatch({
  e <- parse(text = s, keep.source = FALSE)[[1]][[3]]  # the right-hand side of y ~ ...
  if (is.numeric(e)) "number" else if (is.name(e)) paste0("name:", as.character(e)) else "call"
}, error = function(e) "error"), "")
jsonlite::write_json(unname(kind), args[1])
"""

NON_ASCII_DIGITS = ["\u0661", "\uff11", "\u0966", "\u2167", "\u00b2"]


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_r_never_reads_a_unicode_digit_as_a_number(needs_r, locale):
    """R reads these as names (UTF-8 locale) or fails to parse (C locale), never as numbers;
    the validator refuses them all, naming the character, instead of reading '١' as 1."""
    texts = [f"y ~ {ch}" for ch in NON_ASCII_DIGITS]
    kinds = _rscript(PARSE_KIND, json.dumps(texts), locale=locale)
    assert "number" not in kinds
    if locale == "C.UTF-8":
        assert kinds[:4] == [f"name:{ch}" for ch in NON_ASCII_DIGITS[:4]]
    for ch in NON_ASCII_DIGITS:
        with pytest.raises(FormulaError) as info:
            validate_formula(f"y ~ x + ({ch} | g)", ["y", "x", "g", ch], "lmer")
        assert info.value.token == ch and f"U+{ord(ch):04X}" in str(info.value)


def test_non_ascii_letters_are_names_in_r_and_here(needs_r):
    letters = ["\u00e9t\u00e9", "Gr\u00f6\u00dfe", "\u0416x", "\u4e2d", "x\u00e9"]
    kinds = _rscript(PARSE_KIND, json.dumps([f"y ~ {w}" for w in letters]))
    assert kinds == [f"name:{w}" for w in letters]
    validate_formula("y ~ " + " + ".join(letters) + " + (1 | g)", ["y", "g", *letters], "lmer")


RESERVED_NAMES = r"""
args <- commandArgs(trailingOnly = TRUE)
names_ <- jsonlite::fromJSON(args[2])
d <- data.frame(y = c(1, 2, 3, 4))
ok <- vapply(names_, function(nm) {
  d[[nm]] <- c(4, 1, 3, 2)
  tryCatch({ model.frame(as.formula(paste("y ~", nm)), d); TRUE }, error = function(e) FALSE)
}, TRUE)
jsonlite::write_json(unname(ok), args[1])
"""


def test_reserved_dot_names_match_r(needs_r):
    names = ["...", "..1", "..01", "..0", "..12", "..", "....", "..a", "..1a", ".x"]
    r_ok = _rscript(RESERVED_NAMES, json.dumps(names))
    for name, ok in zip(names, r_ok, strict=True):
        if ok:
            validate_formula(f"y ~ {name}", ["y", name], "bayesglm")
        else:
            with pytest.raises(FormulaError, match="reserved") as info:
                validate_formula(f"y ~ {name}", ["y", name], "bayesglm")
            assert info.value.token == name
    assert r_ok == [False] * 5 + [True] * 5


BRACKETS = r"""
args <- commandArgs(trailingOnly = TRUE)
texts <- jsonlite::fromJSON(args[2])
ok <- vapply(texts, function(s) tryCatch({ parse(text = s); "ok" },
                                         error = function(e) conditionMessage(e)), "")
jsonlite::write_json(unname(ok), args[1])
"""


def test_bracket_limit_is_r_parsers(needs_r):
    k = R_MAX_BRACKETS
    texts = [
        "y ~ " + "(" * k + "x" + ")" * k,
        "y ~ " + "(" * (k + 1) + "x" + ")" * (k + 1),
        "y ~ " + "log(" * k + "x" + ")" * k,
        "y ~ " + "log(" * (k + 1) + "x" + ")" * (k + 1),
        "y ~ " + "I(" * 20 + "(" * (k - 20) + "x" + ")" * k,
        "y ~ " + "I(" * 20 + "(" * (k - 19) + "x" + ")" * (k + 1),
    ]
    r = _rscript(BRACKETS, json.dumps(texts))
    for text, res in zip(texts, r, strict=True):
        if res == "ok":
            validate_formula(text, ["y", "x"], "bayesglm")
        else:
            assert "contextstack overflow" in res
            with pytest.raises(FormulaError, match="R's parser accepts at most 50"):
                validate_formula(text, ["y", "x"], "bayesglm")
    assert r[::2] == ["ok"] * 3 and "ok" not in r[1::2]


SHAPES = [  # chains R's recursive code walks one call per link (no balancing applies)
    lambda k: "y ~ I(" + "-" * k + "x) + (1 | g)",
    lambda k: "y ~ " + ":".join(["x"] * k) + " + (1 | g)",
    lambda k: "y ~ x + z" + " - z" * k + " + (1 | g)",
    lambda k: "y ~ I(x" + "^1" * k + ") + (1 | g)",
    lambda k: "y ~ I(" + " + ".join(["x"] * k) + ") + (1 | g)",  # a variable's text is kept
]


def _longest(shape, depth: int) -> int:
    """The longest chain of `shape` whose R call-tree depth is at most `depth`."""
    lo, hi = 1, 2 * depth  # depth(shape(lo)) <= depth < depth(shape(hi))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if r_depth(parse_formula(shape(mid)))[0] <= depth else (lo, mid)
    return lo


def test_r_runs_formulas_at_the_depth_limit(needs_r):
    """At MAX_R_DEPTH, lme4 (through the embedded transport, where a C stack overflow would kill
    this process; it does near 650 levels) processes each shape; one more link is refused."""
    rng = np.random.default_rng(3)
    d = pd.DataFrame(
        {"y": rng.normal(size=40), "x": rng.uniform(1, 2, 40), "z": rng.normal(size=40)}
    )
    d["g"] = np.repeat(list("abcdefgh"), 5)
    for shape in SHAPES:
        k = _longest(shape, MAX_R_DEPTH)
        assert k > MAX_R_DEPTH - 10
        validate_formula(shape(k), d.columns, "lmer")
        r = mixbridge.lmer_objective(shape(k), d, theta=[0.5], engine="r")
        py = mixbridge.lmer_objective(shape(k), d, theta=[0.5])
        assert np.isfinite(r) and abs(py - r) <= 1e-8 * abs(r)
        with pytest.raises(FormulaError, match="nested too deeply"):
            validate_formula(shape(k + 1), d.columns, "lmer")


def test_flat_1000_term_formula_on_both_engines(needs_r):
    """lme4's findbars recurses once per '+': a 1000-term sum overflows R's C stack unless the R
    side balances the sum first (same terms, same order); both engines then agree."""
    rng = np.random.default_rng(5)
    n, k = 1100, 1000
    d = pd.DataFrame(rng.normal(size=(n, k)), columns=[f"x{i}" for i in range(1, k + 1)])
    d["y"] = d["x1"] + rng.normal(size=n)
    d["g"] = np.repeat([f"g{i}" for i in range(10)], n // 10)
    text = "y ~ " + " + ".join(f"x{i}" for i in range(1, k + 1)) + " + (1 | g)"
    py = mixbridge.lmer_objective(text, d, theta=[0.7])
    r = mixbridge.lmer_objective(text, d, theta=[0.7], engine="r")
    assert abs(py - r) <= 1e-8 * abs(r)


BALANCE = r"""
args <- commandArgs(trailingOnly = TRUE)
source(args[2])
suppressMessages(library(lme4))
texts <- jsonlite::fromJSON(args[3])
set.seed(1)
n <- 400
d <- as.data.frame(matrix(rnorm(n * 40), n, 40))
names(d) <- paste0("x", 1:40)
d$y <- rnorm(n); d$g <- factor(rep(1:20, n / 20)); d$h <- factor(rep(1:8, n / 8))
d$o <- runif(n)
same <- vapply(texts, function(s) {
  f0 <- as.formula(s)
  f1 <- .mb_formula(s)
  keep <- c("variables", "factors", "term.labels", "order", "intercept", "response", "offset")
  t0 <- attributes(terms(lme4::nobars(f0), keep.order = TRUE))[keep]
  t1 <- attributes(terms(lme4::nobars(f1), keep.order = TRUE))[keep]
  l0 <- lFormula(f0, d); l1 <- lFormula(f1, d)
  identical(t0, t1) && identical(l0$X, l1$X) && identical(l0$reTrms$Zt, l1$reTrms$Zt) &&
    identical(l0$reTrms$cnms, l1$reTrms$cnms) && identical(l0$reTrms$flist, l1$reTrms$flist) &&
    identical(lapply(l0$fr, identity), lapply(l1$fr, identity)) &&  # the formula attr differs
    identical(row.names(l0$fr), row.names(l1$fr)) && !identical(f0[[3]], f1[[3]])  # rebuilt
}, TRUE)
jsonlite::write_json(unname(same), args[1])
"""


def test_r_side_sum_balancing_changes_nothing_but_depth(needs_r):
    """`.mb_balance_sums` (mixbridge.R) rebuilds the formula's `+` chains as balanced trees:
    terms, model frame, X, Z and the grouping factors are identical to R's on the original."""
    xs = [f"x{i}" for i in range(1, 41)]
    texts = [
        "y ~ " + " + ".join(xs) + " + (1 | g)",
        "y ~ 0 + " + " + ".join(xs[:9]) + " - x3 + x3:x4 + 1 + (x1 + x2 + x5 + x6 | g)",
        "y ~ x1 + x2 - 1 + x3 + x4 + x5 + offset(o) + (1 | g) + (0 + x1 | h) + x6",
        "y ~ (x1 + x2 + x3 + x4)^2 + x5 / (x6 + x7 + x8) + x9 %in% (x10 + x11 + x12 + x13)"
        " + (1 | g)",
        "y ~ x1 + I(x2 + x3 + x4 + x5) + log(o + x2 + x3 + 2) + (x1 + x2 + x3 || h/g)",
        "y ~ x1 + x2 + (1 | g:h) + x3 - x2 + x4 + (1 | h) + x2 + -x5 + +x6",
    ]
    script = Path(mixbridge.__file__).parent / "r_scripts" / "mixbridge.R"
    same = _rscript(BALANCE, str(script), json.dumps(texts))
    assert same == [True] * len(texts)


PREFIX_FORM = r"""
args <- commandArgs(trailingOnly = TRUE)
texts <- jsonlite::fromJSON(args[2])
pre <- function(e) {
  if (!is.call(e)) return(if (is.numeric(e)) format(e, digits = 15) else as.character(e))
  paste0("(", paste(c(as.character(e[[1]]), vapply(as.list(e)[-1], pre, "")), collapse = " "), ")")
}
out <- vapply(texts, function(s) tryCatch(pre(parse(text = s, keep.source = FALSE)[[1]][[3]]),
                                           error = function(e) "error"), "")
jsonlite::write_json(unname(out), args[1])
"""


def _prefix(node) -> str:
    from mixbridge.formula.parse import BinOp, Call, Name, Num, Paren, UnaryOp, format_r_number

    if isinstance(node, Num):
        return format_r_number(node.value)
    if isinstance(node, Name):
        return node.id
    if isinstance(node, Paren):
        return f"(( {_prefix(node.expr)})"
    if isinstance(node, UnaryOp):
        return f"({node.op} {_prefix(node.operand)})"
    if isinstance(node, BinOp):
        return f"({node.op} {_prefix(node.left)} {_prefix(node.right)})"
    assert isinstance(node, Call)
    return "(" + " ".join([node.fn, *(_prefix(a) for a in node.args)]) + ")"


def _random_expressions(seed: int, count: int) -> list[str]:
    import random

    rnd = random.Random(seed)
    binary = ["+", "-", "*", "/", "^", ":", "%in%", "<", ">=", "==", "!=", "&", "&&", "|", "||"]

    def operand(depth: int) -> str:
        pre = rnd.choice(["", "", "", "-", "!", "+", "- -", "!-"])
        if depth > 0 and rnd.random() < 0.2:
            return f"{pre}({expr(depth - 1)})"
        if depth > 0 and rnd.random() < 0.1:
            return f"{pre}I({expr(depth - 1)})"
        return pre + rnd.choice(["a", "b", "c", "1", "2.5"])

    def expr(depth: int) -> str:
        out = operand(depth)
        for _ in range(rnd.randint(0, 4)):
            op = rnd.choice(binary)
            # (no "<-": R reads a<-b as an assignment, which the tokenizer refuses)
            out += rnd.choice(["", " "]) + op + (" " if op == "<" else rnd.choice(["", " "]))
            out += operand(depth)
        return out

    return [f"y ~ {expr(2)}" for _ in range(count)]


def test_parser_groups_operators_like_r(needs_r):
    """Random expressions of every operator the parser knows, prefix operators in operand
    position included: the tree (in prefix form) is R's, and what R cannot parse (chained
    comparisons) is a FormulaError here."""
    texts = _random_expressions(20240611, 400)
    r = _rscript(PREFIX_FORM, json.dumps(texts))
    assert r.count("error") < len(texts) // 2
    for text, r_form in zip(texts, r, strict=True):
        if r_form == "error":
            with pytest.raises(FormulaError):
                parse_formula(text)
        else:
            assert _prefix(parse_formula(text).rhs) == r_form, text


# ---------------------------------------------------------------------------------------------
# Comparisons inside I(): MASS::bacteria


@pytest.fixture(scope="module")
def bacteria(r_dataset) -> pd.DataFrame:
    d = r_dataset("bacteria", package="MASS")
    d["y01"] = (d["y"] == "y").astype(float)
    return d


BACTERIA_NAMES = ["(Intercept)", "trtdrug", "trtdrug+", "I(week > 2)TRUE"]


def test_bacteria_glmer_python_vs_lme4(bacteria):
    """The lme4 idiom from MASS::bacteria, typed without spaces: R deparses the call and names
    the logical's column "I(week > 2)TRUE"; y is a factor (n/y): the first level is failure."""
    f = "y ~ trt + I(week>2) + (1|ID)"
    py = mixbridge.glmer(f, bacteria, family="binomial")
    r = mixbridge.glmer(f, bacteria, family="binomial", engine="r")
    assert list(r.fixef.index) == BACTERIA_NAMES
    assert list(py.fixef.index) == list(r.fixef.index)
    cmp = mixbridge.compare(py, r)
    cmp.assert_ok()
    assert cmp.row("fixef").status == "ok"


def test_bacteria_lmer_python_vs_lme4(bacteria):
    f = "y01 ~ trt + I(week > 2) + (1 | ID)"
    py = mixbridge.lmer(f, bacteria)
    r = mixbridge.lmer(f, bacteria, engine="r")
    assert list(py.fixef.index) == list(r.fixef.index) == BACTERIA_NAMES
    mixbridge.compare(py, r).assert_ok()


def test_bacteria_logical_combinations_python_vs_lme4(bacteria):
    f = "y ~ I(week >= 2 & week <= 6) + I(!(ap == hilo)) + (1 | ID)"
    with pytest.raises(mixbridge.DataError, match="ap"):
        mixbridge.glmer(f, bacteria, family="binomial")  # factors are not numbers here
    f = "y ~ trt + I(week > 2 & week != 11) + I(-week <= -6) + (1 | ID)"
    py = mixbridge.glmer(f, bacteria, family="binomial")
    r = mixbridge.glmer(f, bacteria, family="binomial", engine="r")
    assert list(r.fixef.index)[-2:] == ["I(week > 2 & week != 11)TRUE", "I(-week <= -6)TRUE"]
    assert list(py.fixef.index) == list(r.fixef.index)
    mixbridge.compare(py, r).assert_ok()
