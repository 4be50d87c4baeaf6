"""Formula algebra: R's `terms.formula` for the fixed part and lme4's bar handling.

Fixed part (R semantics): a term is a set of variables (a variable is any leaf expression, such as
`x`, `log(x)` or `poly(x, 2)`, identified by its deparsed text). `a*b` = a + b + a:b,
`(a+b)^2` = a + b + a:b, `a/b` = a + a:b, `a %in% b` = a:b, `- t` removes t, `0`/`-1` remove the
intercept. Terms are sorted by degree (stably) unless keep_order, and a term's label lists its
variables in order of first appearance in the formula, so `c:a + a:b:c` gives `c:a`, `c:a:b`.

Random part (lme4 `findbars`, `expandDoubleVerts`, `expandSlash`): `(x || g)` becomes
`(1 | g) + (0 + x | g)` (one term per term label of x), `(x | a/b)` becomes `(x | a) + (x | b:a)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mixbridge.errors import FormulaError
from mixbridge.formula.parse import (
    BinOp,
    Call,
    Name,
    Node,
    Num,
    Paren,
    UnaryOp,
    deparse,
    left_spine,
)

_TERM_OPS = frozenset({"+", "-", ":", "*", "%in%", "/"})  # left-associative term operators

Term = frozenset  # frozenset of variable indices


@dataclass
class TermsInfo:
    """Expanded terms of one (bar-free) right-hand side."""

    variables: list[Node]  # leaf expressions, in order of first appearance
    var_names: list[str]  # their deparsed texts
    terms: list[Term]  # each a frozenset of indices into `variables`, in model order
    intercept: bool
    offsets: list[Node] = field(default_factory=list)  # arguments of offset() calls

    def label(self, term: Term) -> str:
        return ":".join(self.var_names[i] for i in sorted(term))

    @property
    def labels(self) -> list[str]:
        return [self.label(t) for t in self.terms]


@dataclass(frozen=True)
class BarTerm:
    """One random-effects term `(lhs | group)` after `||` and `/` expansion."""

    lhs: Node  # the left side, evaluated like a one-sided formula `~ lhs`
    group: tuple[Node, ...]  # the factors whose interaction is the grouping factor
    group_name: str  # lme4's name, e.g. "Subject" or "cask:batch"


# ---------------------------------------------------------------------------------------------
# Fixed part


class _Expander:
    def __init__(self) -> None:
        self.variables: list[Node] = []
        self.var_names: list[str] = []
        self.var_index: dict[str, int] = {}
        self.intercept = True
        self.offsets: list[Node] = []

    def var(self, node: Node) -> int:
        name = deparse(node)
        if name not in self.var_index:
            self.var_index[name] = len(self.var_names)
            self.var_names.append(name)
            self.variables.append(node)
        return self.var_index[name]

    def expand(self, node: Node) -> list[Term]:
        """Terms of `node`; intercept changes (0, 1, -1) update self.intercept left to right."""
        if isinstance(node, Paren):
            return self.expand(node.expr)
        if isinstance(node, Num):
            if node.value == 0:
                self.intercept = False
            elif node.value == 1:
                self.intercept = True
            else:
                raise FormulaError(
                    f"invalid model formula: the number {deparse(node)} is not a term "
                    "(only 0 and 1 are, to remove or keep the intercept)",
                    token=deparse(node),
                )
            return []
        if isinstance(node, Call) and node.fn == "offset":
            self.var(node)  # R keeps offsets in the variable list
            self.offsets.append(node)
            return []
        if isinstance(node, (Name, Call)):
            return [Term({self.var(node)})]
        if isinstance(node, UnaryOp):
            if node.op == "+":
                return self.expand(node.operand)
            return self._remove([], node.operand)
        if isinstance(node, BinOp) and node.op in _TERM_OPS:
            # a chain a + b - c:d ..., left to right by a loop (a 1000-term sum, no recursion)
            leftmost, chain = left_spine(node, _TERM_OPS)
            terms = self.expand(leftmost)
            for op, right in chain:
                terms = self._combine(op, terms, right)
            return terms
        if isinstance(node, BinOp):
            op = node.op
            if op == "^":
                return self._power(node)
            if op in ("|", "||"):
                raise FormulaError(
                    f"random-effects term '{deparse(node)}' must be a separate summand in "
                    "parentheses, e.g. y ~ x + (1 | g)",
                    token=op,
                )
        raise FormulaError(f"invalid model formula term: {deparse(node)!r}", token=deparse(node))

    def _combine(self, op: str, left: list[Term], right_node: Node) -> list[Term]:
        """Terms of `left op right` given the terms of left (R's EncodeVars, left first)."""
        if op == "-":
            return self._remove(left, right_node)
        right = self.expand(right_node)
        if op == "+":
            return _union(left, right)
        if op == ":":
            return _interact(left, right)
        if op == "*":
            return _union(_union(left, right), _interact(left, right))
        if op == "%in%":
            return _interact(left, [_all_vars(right)] if right else [])
        # "/": a/b = a + a:b, with a's variables as one term
        return _union(left, _interact([_all_vars(left)] if left else [], right))

    def _remove(self, left: list[Term], node: Node) -> list[Term]:
        inner = node.expr if isinstance(node, Paren) else node
        if isinstance(inner, Num):
            if inner.value in (0, 1):
                self.intercept = inner.value == 0  # "- 1" drops it, "- 0" keeps it
                return left
        saved = self.intercept
        drop = set(self.expand(node))
        self.intercept = saved
        return [t for t in left if t not in drop]

    def _power(self, node: BinOp) -> list[Term]:
        exponent = node.right
        if not isinstance(exponent, Num) or exponent.value < 1 or exponent.value % 1:
            raise FormulaError(
                f"invalid power in formula term {deparse(node)!r}: need a positive integer",
                token=deparse(exponent),
            )
        base = self.expand(node.left)
        # R's PowerTerms: right <- base; repeat right <- unique(l | r for l in base, r in right).
        # Powers beyond the number of variables add nothing (bounded loop even for x^1e9).
        n_vars = len(_all_vars(base)) if base else 0
        result = list(base)
        for _ in range(min(int(exponent.value), max(n_vars, 1)) - 1):
            result = _interact(base, result)
        return result


def _union(a: list[Term], b: list[Term]) -> list[Term]:
    return list(dict.fromkeys([*a, *b]))  # ordered, without duplicates


MAX_TERMS = 5000  # guards against (x1 + ... + x30)^30 style explosions


def _interact(a: list[Term], b: list[Term]) -> list[Term]:
    if len(a) * len(b) > 4 * MAX_TERMS:
        raise FormulaError(
            f"formula expands to too many terms (more than {MAX_TERMS}); simplify the interactions",
            token="^" if len(a) > 1 and len(b) > 1 else "*",
        )
    out = list(dict.fromkeys(Term(s | t) for s in a for t in b))
    if len(out) > MAX_TERMS:
        raise FormulaError(
            f"formula expands to too many terms ({len(out)} > {MAX_TERMS}); simplify the "
            "interactions",
            token=None,
        )
    return out


def _all_vars(terms: list[Term]) -> Term:
    out: set[int] = set()
    for t in terms:
        out |= t
    return Term(out)


def expand_terms(rhs: Node | None, keep_order: bool = False) -> TermsInfo:
    """R's terms.formula on a bar-free right-hand side (None means `~ 1`)."""
    ex = _Expander()
    terms = ex.expand(rhs) if rhs is not None else []
    if not keep_order:
        terms = sorted(terms, key=len)  # stable: R sorts by interaction order only
    return TermsInfo(ex.variables, ex.var_names, terms, ex.intercept, ex.offsets)


# ---------------------------------------------------------------------------------------------
# Random part


def split_bars(rhs: Node) -> tuple[Node | None, list[Node]]:
    """Split a right-hand side into its bar-free part and its `(... | ...)` summands."""
    bars: list[Node] = []

    def strip(node: Node, negated: bool = False) -> Node | None:
        inner = node
        while isinstance(inner, Paren):
            inner = inner.expr
        if isinstance(inner, BinOp) and inner.op in ("|", "||"):
            if negated:
                raise FormulaError(
                    f"random-effects term '{deparse(inner)}' cannot be removed with '-'",
                    token="-",
                )
            bars.append(inner)
            return None
        if not (isinstance(node, BinOp) and node.op in ("+", "-")):
            return node
        # the summands of a + b - c ..., left to right by a loop
        leftmost, chain = left_spine(node, {"+", "-"})
        kept = strip(leftmost, negated)
        for op, right in chain:
            rest = strip(right, negated or op == "-")
            if kept is None:
                kept = None if rest is None else (rest if op == "+" else UnaryOp("-", rest))
            elif rest is not None:
                kept = BinOp(op, kept, rest)
        return kept

    fixed = strip(rhs)
    return fixed, bars


def _slash_groups(node: Node) -> list[tuple[Node, ...]]:
    """lme4's expandSlash on a grouping expression: a/b -> [a], [b, a] (named "b:a")."""
    while isinstance(node, Paren):
        node = node.expr
    if isinstance(node, BinOp) and node.op == "/":
        outer = _slash_groups(node.left)
        inner_factors = _colon_factors(node.right)
        last = outer[-1]
        return outer + [tuple(inner_factors) + last]
    return [tuple(_colon_factors(node))]


def _colon_factors(node: Node) -> list[Node]:
    while isinstance(node, Paren):
        node = node.expr
    if isinstance(node, BinOp) and node.op == ":":
        leftmost, chain = left_spine(node, {":"})
        out = _colon_factors(leftmost)
        for _, right in chain:
            out += _colon_factors(right)
        return out
    if isinstance(node, Name):
        return [node]
    # lme4 evaluates grouping factors in the model frame, where a call such as factor(g) is not
    # found ("couldn't evaluate grouping factor"), so only variables are accepted
    raise FormulaError(
        f"invalid grouping factor {deparse(node)!r}: use a column name, a:b or a/b "
        "(lme4 cannot evaluate expressions as grouping factors)",
        token=deparse(node),
    )


def expand_bars(bars: list[Node]) -> list[BarTerm]:
    """Expand `||` and `/` in the random-effects terms, keeping formula order."""
    out: list[BarTerm] = []
    for bar in bars:
        assert isinstance(bar, BinOp)
        groups = _slash_groups(bar.right)
        if bar.op == "||":
            lhs_list = _double_vert_lhs(bar.left)
        else:
            lhs_list = [bar.left]
        # lme4 expands || first, then / within each resulting term
        for lhs in lhs_list:
            for group in groups:
                out.append(BarTerm(lhs, group, ":".join(deparse(g) for g in group)))
    return out


def _double_vert_lhs(lhs: Node) -> list[Node]:
    """(x || g): (1 | g) if x has an intercept, then (0 + t | g) for every term label t of x."""
    info = expand_terms(lhs, keep_order=False)
    out: list[Node] = []
    if info.intercept:
        out.append(Num(1.0))
    for t in info.terms:
        term_node: Node = info.variables[min(t)]
        for i in sorted(t)[1:]:
            term_node = BinOp(":", term_node, info.variables[i])
        out.append(BinOp("+", Num(0.0), term_node))
    return out
