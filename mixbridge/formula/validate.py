"""Allow-list validation of formulas (security).

An R formula can run arbitrary code when R evaluates it, and formulas reach us from CI configs and
other people's data. Only this subset is accepted: variable names present in the data, numbers,
the formula operators `~ + - * / ^ : | || %in%`, parentheses and a few functions. Everything else
raises FormulaError with the offending `.token`. The tokenizer (`parse.tokenize`) already rejects
strings, backticks, `;`, `<-`, `=`, `::`, `$`, `@` and unknown `%op%`.
"""

from __future__ import annotations

from collections.abc import Iterable

from mixbridge.errors import FormulaError
from mixbridge.formula.parse import (
    BinOp,
    Call,
    Formula,
    Name,
    Node,
    Num,
    Paren,
    UnaryOp,
    deparse,
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
MAX_FORMULA_CHARS = 20_000  # far beyond real models; bounds parser recursion and work
MAX_POLY_DEGREE = 50


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
    except RecursionError:
        raise FormulaError("formula is nested too deeply to be processed") from None


def _parse_and_validate(formula: str, columns: Iterable[str], model: str) -> Formula:
    tree = parse_formula(formula)
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
        if isinstance(node, Paren):
            self.formula_part(node.expr, top=top, in_bar=in_bar)
        elif isinstance(node, (Name, Num)):
            self.arith(node)
        elif isinstance(node, Call):
            self.call(node, top_level=top and not in_bar)
        elif isinstance(node, UnaryOp):
            self.formula_part(node.operand, top=top, in_bar=in_bar)
        elif isinstance(node, BinOp):
            if node.op in ("|", "||"):
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
            else:
                keep_top = top and node.op in ("+", "-")
                self.formula_part(node.left, top=keep_top, in_bar=in_bar)
                self.formula_part(node.right, top=keep_top, in_bar=in_bar)
        else:  # pragma: no cover - the parser makes no other nodes
            raise FormulaError(f"invalid formula element {node!r}")

    def group_part(self, node: Node) -> None:
        """Grouping factors: column names combined with ':' or '/' (as lme4 evaluates them)."""
        if isinstance(node, Paren):
            self.group_part(node.expr)
        elif isinstance(node, Name):
            self.name(node)
        elif isinstance(node, BinOp) and node.op in (":", "/"):
            self.group_part(node.left)
            self.group_part(node.right)
        else:
            tok = node.fn if isinstance(node, Call) else deparse(node)
            raise FormulaError(
                f"invalid grouping factor '{deparse(node)}': use a column name, a:b or a/b "
                "(lme4 cannot evaluate expressions as grouping factors)",
                token=tok,
            )

    def call(self, node: Call, top_level: bool = False) -> None:
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
        self.arith(node.args[0])

    def arith(self, node: Node) -> None:
        """An expression evaluated as R code: numbers, columns, + - * / ^ and allowed calls."""
        if isinstance(node, Num):
            return
        if isinstance(node, Name):
            self.name(node)
        elif isinstance(node, Paren):
            self.arith(node.expr)
        elif isinstance(node, UnaryOp):
            self.arith(node.operand)
        elif isinstance(node, BinOp):
            if node.op not in ARITH_OPS:
                raise FormulaError(
                    f"operator {node.op!r} is not allowed inside a function argument or the "
                    f"response ('{deparse(node)}')",
                    token=node.op,
                )
            self.arith(node.left)
            self.arith(node.right)
        elif isinstance(node, Call):
            if node.fn in ("factor", "poly", "offset", "cbind") or node.fn not in ARITH_FUNCTIONS:
                if node.fn in TERM_FUNCTIONS or node.fn == "cbind":
                    raise FormulaError(
                        f"{node.fn}() cannot be nested inside an expression ('{deparse(node)}')",
                        token=node.fn,
                    )
                self.call(node)  # raises the not-allowed error
            self.call(node)
