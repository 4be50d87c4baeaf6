"""Tokenizer, parser and deparser for R model formulas.

Only the safe subset of R's syntax is recognized (see `mixbridge.formula.validate`): names,
numbers, the formula operators `~ + - * / ^ : | || %in%`, comparisons `< > <= >= == !=`, `&`, `!`,
parentheses and function calls. Anything else is rejected while tokenizing, so no later stage
ever sees it. Characters are read as R reads them: names are ASCII letters, digits, `.`, `_` and
non-ASCII letters (R, in a UTF-8 locale, takes those as name characters too); numbers use the
ASCII digits only. Any other character, such as a non-ASCII digit ('١', which R never reads as
1), is an error naming it.

Operator precedence follows R's `?Syntax` (lowest first):
    ~  <  | ||  <  &  <  !  <  comparisons  <  + -  <  * /  <  %in%  <  :  <  unary + -  <  ^
`^` is right-associative and its exponent may carry a unary minus; comparisons do not chain
(`a < b < c` is a syntax error in R); a prefix `!` or `-` in operand position takes everything
of higher precedence after it (R: `a + !b > 1` is `a + !(b > 1)`).

Depth: R's parser keeps open brackets on a stack of `R_MAX_BRACKETS` (50; "contextstack
overflow" beyond). The parser recurses only into brackets, prefix operators and right operands,
never along a chain such as `x1 + x2 + ... + x1000` (a left-deep tree), and stops near
`MAX_DEPTH` levels. Code that walks the tree follows the same rule (`left_spine`).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from mixbridge.errors import FormulaError

# R's reserved words can never be variables (R would parse them as syntax or constants).
RESERVED = frozenset(
    "if else repeat while function for next break in TRUE FALSE NULL Inf NaN NA NA_integer_ "
    "NA_real_ NA_character_ NA_complex_".split()
)
# `...` and `..1`, `..2`, ... are the arguments of a function in R: as a variable, model.frame
# fails ("'...' used in an incorrect context", "the ... list contains fewer than 1 element")
_DOTS = re.compile(r"\.\.\.|\.\.[0-9]+")

R_MAX_BRACKETS = 50  # R's gram.y CONTEXTSTACK_SIZE: open '(' at once, calls included
# Nesting accepted (R's call-tree depth, see `validate.r_depth`): R's recursive formula code
# (terms, lme4's findbars) needs ~13 KB of C stack per level and fails near 630 levels on the usual
# 8 MB stack; an embedded R (rpy2 turns R's stack check off) crashes instead. 200 leaves room.
MAX_DEPTH = 200

# ---------------------------------------------------------------------------------------------
# AST


@dataclass(frozen=True)
class Node:
    """Base class of formula AST nodes."""


@dataclass(frozen=True)
class Num(Node):
    value: float


@dataclass(frozen=True)
class Name(Node):
    id: str


@dataclass(frozen=True)
class Call(Node):
    fn: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class BinOp(Node):
    op: str  # ~ | || & < > <= >= == != + - * / %in% : ^
    left: Node
    right: Node


@dataclass(frozen=True)
class UnaryOp(Node):
    op: str  # "-", "+" or "!"
    operand: Node


@dataclass(frozen=True)
class Paren(Node):
    expr: Node


@dataclass(frozen=True)
class Formula:
    lhs: Node | None
    rhs: Node


COMPARISONS = frozenset({"<", ">", "<=", ">=", "==", "!="})
LOGICAL_OPS = COMPARISONS | {"&"}  # binary operators with a logical value (allowed inside I())
# left-associative binary operators: chains of them form left spines (walked by loops)
LEFT_ASSOC = frozenset({"|", "||", "&", "&&", "+", "-", "*", "/", "%in%", ":"}) | COMPARISONS


def left_spine(node: Node, ops: frozenset[str] | set[str] = LEFT_ASSOC):
    """(leftmost, [(op, right), ...]) of a left-deep chain of binary operators in `ops`, in
    evaluation order: `a + b - c` is (a, [("+", b), ("-", c)]). Loops, so a 1000-term sum costs
    no recursion."""
    chain: list[tuple[str, Node]] = []
    while isinstance(node, BinOp) and node.op in ops:
        chain.append((node.op, node.right))
        node = node.left
    chain.reverse()
    return node, chain


# ---------------------------------------------------------------------------------------------
# Tokenizer

_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SIMPLE_OPS = {"~", "+", "-", "*", "/", "^", ":", "(", ")", ","}


@dataclass(frozen=True)
class Token:
    kind: str  # "name", "num", "op", "end"
    text: str
    pos: int


def _is_letter(ch: str) -> bool:
    """A letter R and Python both take as a name character (R in a UTF-8 locale also takes
    some digits, marks and symbols; those are refused here, see `_bad_char`)."""
    if ch.isascii():
        return ch.isalpha()
    return unicodedata.category(ch).startswith("L")


def _is_name_start(ch: str) -> bool:
    return _is_letter(ch) or ch == "."


def _is_name_char(ch: str) -> bool:
    return _is_letter(ch) or ch in "._" or "0" <= ch <= "9"


def tokenize(text: str) -> list[Token]:
    """Split `text` into tokens; raise FormulaError naming the first disallowed token."""
    toks: list[Token] = []
    i, n = 0, len(text)
    depth = 0  # open brackets, as R's parser counts them
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
            continue
        # a name: letters, digits, '.', '_'; may start with '.' only if not followed by a digit
        if _is_name_start(ch) and not (ch == "." and i + 1 < n and "0" <= text[i + 1] <= "9"):
            j = i + 1
            while j < n and _is_name_char(text[j]):
                j += 1
            if j < n and not text[j].isascii() and not _is_letter(text[j]):
                _bad_char(text[j], j)
            toks.append(Token("name", text[i:j], i))
            i = j
            continue
        m = _NUMBER.match(text, i)
        if m:
            j = m.end()
            if j < n and (_is_name_char(text[j]) or text[j] == "L"):
                # R literals like 1L, 0x10, 2i or a name glued to a number
                k = j
                while k < n and _is_name_char(text[k]):
                    k += 1
                _bad(text[i:k], "number literal", i)
            if j < n and not text[j].isascii():
                _bad_char(text[j], j)
            toks.append(Token("num", m.group(), i))
            i = j
            continue
        if ch == "|":
            if text.startswith("|>", i):
                _bad("|>", "pipe operator", i)
            op = "||" if text.startswith("||", i) else "|"
            toks.append(Token("op", op, i))
            i += len(op)
            continue
        if ch == "&":
            op = "&&" if text.startswith("&&", i) else "&"
            toks.append(Token("op", op, i))
            i += len(op)
            continue
        if ch == "%":
            j = text.find("%", i + 1)
            op = text[i : j + 1] if j > 0 else text[i:]
            if op != "%in%":
                _bad(op, "operator", i)
            toks.append(Token("op", op, i))
            i = j + 1
            continue
        if ch == ":" and text.startswith("::", i):
            _bad(":::" if text.startswith(":::", i) else "::", "namespace operator", i)
        if text.startswith("<<-", i):
            _bad("<<-", "assignment", i)
        if text.startswith("<-", i):
            raise FormulaError(
                f"assignment '<-' at position {i} is not allowed in a model formula (R reads "
                "'x<-1' as an assignment; for a comparison write 'x < -1')",
                token="<-",
            )
        if ch == "-" and text.startswith("->", i):
            _bad("->>" if text.startswith("->>", i) else "->", "assignment", i)
        if ch in "\"'":
            j = text.find(ch, i + 1)
            _bad(text[i : j + 1] if j > 0 else text[i:], "string literal", i)
        if ch == "`":
            j = text.find("`", i + 1)
            _bad(text[i : j + 1] if j > 0 else text[i:], "backtick-quoted name", i)
        if ch in "<>=!":
            two = text[i : i + 2]
            op = two if two in ("<=", ">=", "==", "!=") else ch
            if op == "=":
                _bad("=", "operator", i)
            toks.append(Token("op", op, i))
            i += len(op)
            continue
        if ch in _SIMPLE_OPS:
            if ch == "(":
                depth += 1
                if depth > R_MAX_BRACKETS:
                    raise FormulaError(
                        f"formula nests more than {R_MAX_BRACKETS} parentheses at position {i}; "
                        f"R's parser accepts at most {R_MAX_BRACKETS} open at once ('contextstack "
                        "overflow'), function calls included",
                        token="(",
                    )
            elif ch == ")":
                depth -= 1
            toks.append(Token("op", ch, i))
            i += 1
            continue
        if not ch.isascii():
            _bad_char(ch, i)
        _bad(ch, "character", i)
    toks.append(Token("end", "", n))
    return toks


def _bad(token: str, what: str, pos: int) -> None:
    raise FormulaError(
        f"{what} {token!r} at position {pos} is not allowed in a model formula", token=token
    )


def _bad_char(ch: str, pos: int) -> None:
    """A non-ASCII character that is not a letter: R reads it differently from Python or not
    at all, so it is refused, named by its code point."""
    code = f"U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed')}"
    if unicodedata.category(ch).startswith("N"):
        raise FormulaError(
            f"non-ASCII digit {ch!r} ({code}) at position {pos} is not allowed in a model "
            "formula: R never reads it as a number (a UTF-8 locale takes it as part of a name, "
            "the C locale as a syntax error); use the digits 0-9",
            token=ch,
        )
    raise FormulaError(
        f"character {ch!r} ({code}) at position {pos} is not allowed in a model formula (names "
        "may use letters, the digits 0-9, '.' and '_')",
        token=ch,
    )


# ---------------------------------------------------------------------------------------------
# Parser (precedence climbing: one loop per precedence level, recursion only into operands)

# binding power and associativity of binary operators (R's ?Syntax)
_BINARY: dict[str, tuple[int, str]] = {
    "|": (10, "left"),
    "||": (10, "left"),
    "&": (20, "left"),
    "&&": (20, "left"),
    **{op: (40, "none") for op in COMPARISONS},
    "+": (50, "left"),
    "-": (50, "left"),
    "*": (60, "left"),
    "/": (60, "left"),
    "%in%": (70, "left"),
    ":": (80, "left"),
    "^": (100, "right"),
}
_PREFIX = {"!": 30, "-": 90, "+": 90}  # an operand takes every operator binding tighter


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.toks[self.i]

    def take(self) -> Token:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def at(self, *ops: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.text in ops

    def expect(self, op: str) -> None:
        tok = self.take()
        if tok.kind != "op" or tok.text != op:
            found = tok.text or "end of formula"
            raise FormulaError(
                f"expected {op!r} at position {tok.pos} of formula {self.text!r}, found {found!r}",
                token=tok.text or None,
            )

    def unexpected(self, tok: Token) -> FormulaError:
        found = tok.text or "end of formula"
        return FormulaError(
            f"unexpected {found!r} at position {tok.pos} of formula {self.text!r}",
            token=tok.text or None,
        )

    def formula(self) -> Formula:
        lhs = None
        if not self.at("~"):
            lhs = self.expr(0)
        if not self.at("~"):
            tok = self.peek()
            if tok.kind == "end":
                raise FormulaError(
                    f"formula {self.text!r} has no '~' (expected e.g. 'y ~ x + (1 | g)')",
                    token=None,
                )
            raise self.unexpected(tok)
        self.take()
        rhs = self.expr(0)
        tok = self.peek()
        if tok.kind != "end":
            raise self.unexpected(tok)
        return Formula(lhs, rhs)

    def expr(self, min_power: int) -> Node:
        """An expression of operators binding at least `min_power` tightly."""
        self.depth += 1
        if self.depth > MAX_DEPTH + 2:  # never below R's depth (validate checks that exactly)
            raise FormulaError(
                f"formula is nested too deeply: more than {MAX_DEPTH} levels of brackets, "
                f"operators and calls (R's recursive formula code takes at most {MAX_DEPTH} here)",
                token=None,
            )
        tok = self.peek()
        if tok.kind == "op" and tok.text in _PREFIX:
            self.take()
            left: Node = UnaryOp(tok.text, self.expr(_PREFIX[tok.text] + 1))
        else:
            left = self.primary()
        while True:
            tok = self.peek()
            if tok.kind != "op" or tok.text not in _BINARY:
                break
            power, assoc = _BINARY[tok.text]
            if power < min_power:
                break
            self.take()
            right = self.expr(power if assoc == "right" else power + 1)
            left = BinOp(tok.text, left, right)
            if assoc == "none" and self.at(*COMPARISONS):
                raise self.unexpected(self.peek())  # R: comparisons do not chain
        self.depth -= 1
        return left

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "num":
            return Num(float(tok.text))
        if tok.kind == "name":
            if tok.text in RESERVED:
                raise FormulaError(
                    f"R keyword/constant {tok.text!r} is not allowed in a model formula",
                    token=tok.text,
                )
            if _DOTS.fullmatch(tok.text):
                raise FormulaError(
                    f"{tok.text!r} is reserved in R (the arguments '...' of a function) and "
                    "cannot be a variable in a formula; rename the column",
                    token=tok.text,
                )
            if self.at("("):
                self.take()
                args: list[Node] = []
                if not self.at(")"):
                    args.append(self.expr(0))
                    while self.at(","):
                        self.take()
                        args.append(self.expr(0))
                self.expect(")")
                return Call(tok.text, tuple(args))
            return Name(tok.text)
        if tok.kind == "op" and tok.text == "(":
            inner = self.expr(0)
            self.expect(")")
            return Paren(inner)
        raise self.unexpected(tok)


def parse_formula(text: str) -> Formula:
    """Parse an R formula string into a `Formula` AST (no validation of names or functions)."""
    if not isinstance(text, str):
        raise FormulaError(f"formula must be a string, got {type(text).__name__}")
    if "~" not in text:
        raise FormulaError(
            f"formula {text!r} has no '~' (expected e.g. 'y ~ x + (1 | g)')", token=None
        )
    if text.count("~") > 1:
        raise FormulaError(f"formula {text!r} has more than one '~'", token="~")
    return _Parser(text).formula()


# ---------------------------------------------------------------------------------------------
# Deparsing, with R's spacing (used for variable and column names)

_SPACED = {"~", "|", "||", "&", "&&", "+", "-", "*", "%in%"} | COMPARISONS


def format_r_number(x: float) -> str:
    """Format a number like R's deparse/as.character (15 significant digits, R's fixed/sci rule)."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Inf" if x > 0 else "-Inf"
    if x == 0:
        return "0"
    # fewest significant digits (<= 15) that represent x to 15-digit precision
    for digits in range(1, 16):
        sci = f"{x:.{digits - 1}e}"
        if float(sci) == float(f"{x:.14e}"):
            break
    mant, exp = sci.split("e")
    mant = mant.rstrip("0").rstrip(".") if "." in mant else mant
    e = int(exp)
    sci_txt = f"{mant}e{'-' if e < 0 else '+'}{abs(e):02d}"
    fixed_decimals = max(0, digits - 1 - e)
    fixed_txt = f"{x:.{fixed_decimals}f}"
    # R prefers fixed notation unless it is wider than scientific (scipen = 0)
    return fixed_txt if len(fixed_txt) <= len(sci_txt) else sci_txt


def deparse(node: Node | Formula) -> str:
    """Text of `node` as R's deparse() prints it: spaces around + - * ~ | & and comparisons,
    none around / ^ : and after a prefix operator. Chains are walked by a loop."""
    if isinstance(node, Formula):
        rhs = deparse(node.rhs)
        return f"{deparse(node.lhs)} ~ {rhs}" if node.lhs is not None else f"~{rhs}"
    if isinstance(node, Num):
        return format_r_number(node.value)
    if isinstance(node, Name):
        return node.id
    if isinstance(node, Call):
        return f"{node.fn}({', '.join(deparse(a) for a in node.args)})"
    if isinstance(node, Paren):
        return f"({deparse(node.expr)})"
    if isinstance(node, UnaryOp):
        return f"{node.op}{deparse(node.operand)}"
    if isinstance(node, BinOp):
        leftmost, chain = left_spine(node, LEFT_ASSOC | {"^"})
        parts = [deparse(leftmost)]
        for op, right in chain:
            parts.append(f" {op} " if op in _SPACED else op)
            parts.append(deparse(right))
        return "".join(parts)
    raise TypeError(f"not a formula node: {node!r}")


def walk(node: Node) -> Iterator[Node]:
    """Yield `node` and every node below it (depth first, left to right; no recursion)."""
    stack = [node]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, Call):
            stack.extend(reversed(node.args))
        elif isinstance(node, BinOp):
            stack.append(node.right)
            stack.append(node.left)
        elif isinstance(node, UnaryOp):
            stack.append(node.operand)
        elif isinstance(node, Paren):
            stack.append(node.expr)
