"""Allow-list validation of formulas (security), within the limits R can run.

An R formula can run arbitrary code when R evaluates it, and formulas reach us from CI configs and
other people's data. Only this subset is accepted: variable names present in the data, numbers,
the formula operators `~ + - * / ^ : | || %in%`, parentheses and a few functions; inside `I()`
also the comparisons `< > <= >= == !=`, `&` and `!` (pure, elementwise: `I(week > 2)` is a
logical variable). Everything else raises FormulaError with the offending `.token`. The tokenizer
(`parse.tokenize`) already rejects strings, backticks, `;`, `<-`, `=`, `::`, `$`, `@`, unknown
`%op%`, `|>` and non-ASCII characters other than letters.

`|` stays out of I(): lme4's findbars takes any `|` in a formula for a random-effects bar, even
inside I() (`I(a | b)` becomes a term grouped by `b`); `&&` and `||` are R's scalar operators.

Limits, each R's own (tests/test_formula_r_syntax.py checks them against R):
* at most 50 brackets open at once (R's parser; `parse.R_MAX_BRACKETS`);
* R call-tree depth at most `MAX_R_DEPTH` (R's recursive formula code runs out of C stack a few
  hundred levels deep). The formula's sums are balanced by the R side before lme4 sees them
  (`.mb_balance_sums` in mixbridge.R), so a 1000-term sum is ~11 levels deep, not 1000;
* lmer/glmer: at most `MAX_LME4_PARENS` nested grouping parentheses: lme4's expandDoubleVerts
  visits the inside of every `(` twice, 2^k steps for k nested (k = 16: ~4 s, 20: a minute).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from mixbridge.errors import FormulaError
from mixbridge.formula.parse import (
    COMPARISONS,
    LEFT_ASSOC,
    LOGICAL_OPS,
    MAX_DEPTH,
    R_MAX_BRACKETS,
    BinOp,
    Call,
    Formula,
    Name,
    Node,
    Num,
    Paren,
    UnaryOp,
    deparse,
    left_spine,
    parse_formula,
)
from mixbridge.formula.terms import expand_bars, expand_terms, split_bars

MODELS = ("lmer", "glmer", "bayesglm")
# numeric transforms allowed anywhere a number is expected
ARITH_FUNCTIONS = {"log": 1, "exp": 1, "sqrt": 1, "I": 1, "scale": 1}
# functions that make a model variable (argument counts)
TERM_FUNCTIONS = {**ARITH_FUNCTIONS, "poly": 2, "factor": 1, "offset": 1}
ARITH_OPS = {"+", "-", "*", "/", "^"}
FORMULA_OPS = {"+", "-", "*", "/", "^", ":", "%in%", "|", "||"}
MAX_FORMULA_CHARS = 20_000  # far beyond real models; bounds parser work
MAX_POLY_DEGREE = 50
MAX_R_DEPTH = MAX_DEPTH
MAX_LME4_PARENS = 16
__all__ = [
    "MAX_LME4_PARENS",
    "MAX_R_DEPTH",
    "R_MAX_BRACKETS",
    "check_depth",
    "parse_and_validate",
    "r_depth",
    "validate_formula",
]


def validate_formula(formula: str, columns: Iterable[str], model: str) -> None:
    """Raise FormulaError unless `formula` uses only allowed syntax and known columns."""
    parse_and_validate(formula, columns, model)


def parse_and_validate(formula: str, columns: Iterable[str], model: str) -> Formula:
    """Validate like `validate_formula` and return the parsed formula."""
    if model not in MODELS:
        raise FormulaError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    if isinstance(formula, str) and len(formula) > MAX_FORMULA_CHARS:
        raise FormulaError(
            f"formula has {len(formula)} characters; at most {MAX_FORMULA_CHARS} are accepted"
        )
    try:
        return _parse_and_validate(formula, columns, model)
    except RecursionError:  # pragma: no cover - the depth limits keep recursion far below this
        raise FormulaError(
            f"formula is nested too deeply to be processed (at most {MAX_R_DEPTH} levels)"
        ) from None


def _parse_and_validate(formula: str, columns: Iterable[str], model: str) -> Formula:
    tree = parse_formula(formula)
    check_depth(tree, model)
    cols = [str(c) for c in columns]
    v = _Validator(set(cols), cols, model, formula)
    if tree.lhs is None:
        raise FormulaError(f"formula {formula!r} has no response (left-hand side of '~')")
    v.response(tree.lhs)
    v.formula_part(tree.rhs, top=True)
    if model in ("lmer", "glmer") and not v.n_bars:
        raise FormulaError(
            f"formula {formula!r} has no random-effects term such as (1 | g) (lme4: 'No random "
            "effects terms specified in formula'); use an ordinary linear model (e.g. bayesglm "
            "or statsmodels OLS)",
            token=None,
        )
    # the term algebra itself can fail (e.g. a number other than 0/1 as a term)
    fixed, bars = split_bars(tree.rhs)
    expand_terms(fixed)
    for bar in expand_bars(bars):
        expand_terms(bar.lhs)
    return tree


# ---------------------------------------------------------------------------------------------
# Depth, as R sees the formula


def r_depth(tree: Formula) -> tuple[int, int]:
    """(depth of R's call tree, most nested grouping parentheses) of a parsed formula.

    The call tree is the one lme4 walks after the R side balanced every run of `+` among the
    formula's own operators (`a + b + c + d` as (a + b) + (c + d); `.mb_balance_sums`): such a
    run of m summands adds ceil(log2 m) levels; any other operator, call, bracket or prefix adds
    one, as does `+` inside a variable such as I(a + b), which keeps its text. Computed with an
    explicit stack (the tree may be 1000 deep).
    """
    roots: list[tuple[Node, bool]] = [(tree.rhs, True)]
    if tree.lhs is not None:
        roots.append((tree.lhs, False))  # the response is a variable: not rebuilt
    depth: dict[int, tuple[int, int]] = {}  # id(node) -> (call depth, parenthesis depth)
    children: dict[int, list[Node]] = {}
    stack: list[tuple[Node, bool, bool]] = [(n, formula, False) for n, formula in roots]
    while stack:
        node, formula, done = stack.pop()
        if not done:
            kids = _children(node, formula)
            children[id(node)] = kids
            stack.append((node, formula, True))
            inner = formula and not isinstance(node, Call)
            stack.extend((k, inner, False) for k in kids)
            continue
        kids = children[id(node)]
        sub = [depth[id(k)] for k in kids]
        call = max((d for d, _ in sub), default=0)
        paren = max((p for _, p in sub), default=0)
        if formula and isinstance(node, BinOp) and node.op == "+":
            call += math.ceil(math.log2(len(kids)))  # kids: the summands of the whole run
        elif kids or isinstance(node, Call):
            call += 1
        depth[id(node)] = (call, paren + isinstance(node, Paren))
    call, paren = (max(v) for v in zip(*(depth[id(n)] for n, _ in roots), strict=True))
    return call + 1, paren  # + 1: the `~` call


def _children(node: Node, formula: bool) -> list[Node]:
    if formula and isinstance(node, BinOp) and node.op == "+":
        leftmost, chain = left_spine(node, {"+"})
        return [leftmost, *(right for _, right in chain)]
    if isinstance(node, BinOp):
        return [node.left, node.right]
    if isinstance(node, Call):
        return list(node.args)
    if isinstance(node, UnaryOp):
        return [node.operand]
    if isinstance(node, Paren):
        return [node.expr]
    return []


def check_depth(tree: Formula, model: str) -> None:
    """FormulaError when R could not process the formula's nesting (see the module notes)."""
    depth, parens = r_depth(tree)
    if depth > MAX_R_DEPTH:
        raise FormulaError(
            f"formula is nested too deeply: {depth} levels of operators, calls and brackets "
            f"(at most {MAX_R_DEPTH}; R's recursive formula code, e.g. lme4's findbars, runs "
            "out of C stack a few hundred levels deep). Long sums are fine: a + b + c + ... "
            "counts as a few levels",
            token=None,
        )
    if model in ("lmer", "glmer") and parens > MAX_LME4_PARENS:
        raise FormulaError(
            f"formula nests {parens} parentheses; lme4 takes at most {MAX_LME4_PARENS} here "
            "(its formula processing visits the inside of each '(' twice, 2^k steps for k "
            "nested parentheses); remove redundant parentheses",
            token="(",
        )


# ---------------------------------------------------------------------------------------------
# The allow-list


class _Validator:
    def __init__(self, colset: set[str], cols: list[str], model: str, text: str) -> None:
        self.colset = colset
        self.cols = cols
        self.model = model
        self.text = text
        self.n_bars = 0

    def name(self, node: Name) -> None:
        if node.id == "." and "." not in self.colset:
            raise FormulaError(
                "'.' (all other columns) is not supported; list the columns explicitly",
                token=".",
            )
        if node.id not in self.colset:
            shown = ", ".join(self.cols[:30]) + (", ..." if len(self.cols) > 30 else "")
            raise FormulaError(
                f"column {node.id!r} not found in data; available: {shown}", token=node.id
            )

    def response(self, node: Node) -> None:
        inner = node
        while isinstance(inner, Paren):
            inner = inner.expr
        if isinstance(inner, Call) and inner.fn == "cbind":
            if self.model not in ("glmer", "bayesglm"):
                raise FormulaError(
                    "cbind(successes, failures) responses are only for binomial models "
                    "(glmer, bayesglm)",
                    token="cbind",
                )
            if len(inner.args) != 2:
                raise FormulaError(
                    "cbind() in the response needs exactly two columns: cbind(successes, failures)",
                    token="cbind",
                )
            for a in inner.args:
                self.arith(a)
            return
        self.arith(node)

    def formula_part(self, node: Node, top: bool = False, in_bar: bool = False) -> None:
        while isinstance(node, Paren):
            node = node.expr
        if isinstance(node, (Name, Num)):
            self.arith(node)
        elif isinstance(node, Call):
            self.call(node, top_level=top and not in_bar)
        elif isinstance(node, UnaryOp):
            if node.op == "!":
                _outside_i(node, "!")
            self.formula_part(node.operand, top=top, in_bar=in_bar)
        elif isinstance(node, BinOp) and node.op in ("|", "||"):
            self.bar(node, top, in_bar)
        elif isinstance(node, BinOp) and node.op == "^":
            self.formula_part(node.left, in_bar=in_bar)
            self.formula_part(node.right, in_bar=in_bar)
        elif isinstance(node, BinOp):
            # a chain such as a + b:c - d, by a loop; a piece stays top-level while every
            # operator above it is + or -
            leftmost, chain = left_spine(node, LEFT_ASSOC - {"|", "||"})
            for op, _ in chain:
                if op in LOGICAL_OPS or op == "&&":
                    _outside_i(node, op)
            tops = [top]  # tops[k]: top-level-ness below chain[k:] (the leftmost piece: k = 0)
            for op, _ in reversed(chain):
                tops.append(tops[-1] and op in ("+", "-"))
            tops.reverse()
            self.formula_part(leftmost, top=tops[0], in_bar=in_bar)
            for k, (_, right) in enumerate(chain):
                self.formula_part(right, top=tops[k], in_bar=in_bar)
        else:  # pragma: no cover - the parser makes no other nodes
            raise FormulaError(f"invalid formula element {node!r}")

    def bar(self, node: BinOp, top: bool, in_bar: bool) -> None:
        if in_bar or not top:
            raise FormulaError(
                f"random-effects term '{deparse(node)}' must be a top-level summand "
                "in parentheses, e.g. y ~ x + (1 | g)",
                token=node.op,
            )
        if self.model == "bayesglm":
            raise FormulaError(
                "bayesglm formulas cannot have random-effects terms "
                f"('{deparse(node)}'); use lmer or glmer",
                token=node.op,
            )
        self.n_bars += 1
        self.formula_part(node.left, in_bar=True)
        self.group_part(node.right)

    def group_part(self, node: Node) -> None:
        """Grouping factors: column names combined with ':' or '/' (as lme4 evaluates them)."""
        while isinstance(node, Paren):
            node = node.expr
        if isinstance(node, Name):
            self.name(node)
            return
        if isinstance(node, BinOp) and node.op in (":", "/"):
            leftmost, chain = left_spine(node, {":", "/"})
            self.group_part(leftmost)
            for _, right in chain:
                self.group_part(right)
            return
        tok = node.fn if isinstance(node, Call) else deparse(node)
        raise FormulaError(
            f"invalid grouping factor '{deparse(node)}': use a column name, a:b or a/b "
            "(lme4 cannot evaluate expressions as grouping factors)",
            token=tok,
        )

    def call(self, node: Call, top_level: bool = False, in_i: bool = False) -> None:
        fn = node.fn
        if fn == "cbind":
            raise FormulaError(
                "cbind() is only allowed as the response of a binomial model", token="cbind"
            )
        if fn not in TERM_FUNCTIONS:
            allowed = ", ".join(sorted(TERM_FUNCTIONS) + ["cbind (binomial response)"])
            raise FormulaError(
                f"function {fn!r} is not allowed in a formula; allowed: {allowed}", token=fn
            )
        if fn == "offset" and not top_level:
            raise FormulaError(
                "offset() must be a top-level summand of the fixed part, e.g. y ~ x + offset(o)",
                token="offset",
            )
        nargs = TERM_FUNCTIONS[fn]
        if len(node.args) != nargs:
            raise FormulaError(
                f"{fn}() takes {nargs} argument(s) in a formula, got {len(node.args)}", token=fn
            )
        if fn == "poly":
            degree = node.args[1]
            if not isinstance(degree, Num) or degree.value < 1 or degree.value % 1:
                raise FormulaError(
                    "poly(x, degree) needs a positive integer degree", token=deparse(degree)
                )
            if degree.value > MAX_POLY_DEGREE:
                raise FormulaError(
                    f"poly() degree {deparse(degree)} is above the supported maximum "
                    f"{MAX_POLY_DEGREE}",
                    token=deparse(degree),
                )
        self.arith(node.args[0], in_i=in_i or fn == "I")

    def arith(self, node: Node, in_i: bool = False) -> None:
        """An expression evaluated as R code: numbers, columns, + - * / ^ and allowed calls;
        inside I() (`in_i`) also comparisons, & and !."""
        while isinstance(node, Paren):
            node = node.expr
        if isinstance(node, Num):
            return
        if isinstance(node, Name):
            self.name(node)
        elif isinstance(node, UnaryOp):
            if node.op == "!" and not in_i:
                _outside_i(node, "!")
            self.arith(node.operand, in_i)
        elif isinstance(node, BinOp):
            leftmost, chain = left_spine(node)
            for op, _ in chain:
                self._arith_op(node, op, in_i)
            if isinstance(leftmost, BinOp):  # '^', the one right-associative operator
                self._arith_op(leftmost, leftmost.op, in_i)
                self.arith(leftmost.left, in_i)
                self.arith(leftmost.right, in_i)
            else:
                self.arith(leftmost, in_i)
            for _, right in chain:
                self.arith(right, in_i)
        elif isinstance(node, Call):
            if node.fn in ("factor", "poly", "offset", "cbind") or node.fn not in ARITH_FUNCTIONS:
                if node.fn in TERM_FUNCTIONS or node.fn == "cbind":
                    raise FormulaError(
                        f"{node.fn}() cannot be nested inside an expression ('{deparse(node)}')",
                        token=node.fn,
                    )
                self.call(node)  # raises the not-allowed error
            self.call(node, in_i=in_i)

    def _arith_op(self, node: BinOp, op: str, in_i: bool) -> None:
        if op in ARITH_OPS or (in_i and op in LOGICAL_OPS):
            return
        if op in ("|", "||"):
            raise FormulaError(
                f"operator {op!r} is not allowed inside a function argument or the response "
                f"('{deparse(node)}'): lme4 reads any '|' in a formula as a random-effects bar, "
                "even inside I(); write a | b as !(!a & !b)",
                token=op,
            )
        if op in LOGICAL_OPS or op == "&&":
            _outside_i(node, op)
        raise FormulaError(
            f"operator {op!r} is not allowed inside a function argument or the "
            f"response ('{deparse(node)}')",
            token=op,
        )


def _outside_i(node: Node, op: str) -> None:
    if op == "&&":
        raise FormulaError(
            f"operator '&&' is not allowed ('{deparse(node)}'); R's '&&' takes one value, "
            "use '&' inside I()",
            token=op,
        )
    what = "comparison" if op in COMPARISONS else "logical operator"
    raise FormulaError(
        f"{what} {op!r} ('{deparse(node)}') is allowed only inside I(), where it makes a "
        f"logical variable: write I({deparse(node)})",
        token=op,
    )
