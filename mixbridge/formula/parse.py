"""Tokenizer, recursive-descent parser and deparser for R model formulas.

Only the safe subset of R's syntax is recognized (see `mixbridge.formula.validate`): names,
numbers, the formula operators `~ + - * / ^ : | || %in%`, parentheses and function calls. Anything
else is rejected while tokenizing, so no later stage ever sees it.

Operator precedence follows R's `?Syntax` (lowest first):
    ~   <   | ||   <   + -   <   * /   <   %in%   <   :   <   unary + -   <   ^
`^` is right-associative and its exponent may carry a unary minus, as in R.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mixbridge.errors import FormulaError

# R's reserved words can never be variables (R would parse them as syntax or constants).
RESERVED = frozenset(
    "if else repeat while function for next break in TRUE FALSE NULL Inf NaN NA NA_integer_ "
    "NA_real_ NA_character_ NA_complex_".split()
)

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
    op: str  # one of ~ | || + - * / %in% : ^
    left: Node
    right: Node


@dataclass(frozen=True)
class UnaryOp(Node):
    op: str  # "-" or "+"
    operand: Node


@dataclass(frozen=True)
class Paren(Node):
    expr: Node


@dataclass(frozen=True)
class Formula:
    lhs: Node | None
    rhs: Node


# ---------------------------------------------------------------------------------------------
# Tokenizer

_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_SIMPLE_OPS = {"~", "+", "-", "*", "/", "^", ":", "(", ")", ","}


@dataclass(frozen=True)
class Token:
    kind: str  # "name", "num", "op", "end"
    text: str
    pos: int


def _is_name_start(ch: str) -> bool:
    return ch.isalpha() or ch == "."


def _is_name_char(ch: str) -> bool:
    return ch.isalnum() or ch in "._"


def tokenize(text: str) -> list[Token]:
    """Split `text` into tokens; raise FormulaError naming the first disallowed token."""
    toks: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
            continue
        # a name: letters, digits, '.', '_'; may start with '.' only if not followed by a digit
        if _is_name_start(ch) and not (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            j = i + 1
            while j < n and _is_name_char(text[j]):
                j += 1
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
            toks.append(Token("num", m.group(), i))
            i = j
            continue
        if ch == "|":
            if text.startswith("||", i):
                toks.append(Token("op", "||", i))
                i += 2
            else:
                toks.append(Token("op", "|", i))
                i += 1
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
            _bad("<-", "assignment", i)
        if ch == "-" and text.startswith("->", i):
            _bad("->", "assignment", i)
        if ch in "\"'":
            j = text.find(ch, i + 1)
            _bad(text[i : j + 1] if j > 0 else text[i:], "string literal", i)
        if ch == "`":
            j = text.find("`", i + 1)
            _bad(text[i : j + 1] if j > 0 else text[i:], "backtick-quoted name", i)
        if ch == "=":
            _bad("==" if text.startswith("==", i) else "=", "operator", i)
        if ch in _SIMPLE_OPS:
            toks.append(Token("op", ch, i))
            i += 1
            continue
        _bad(ch, "character", i)
    toks.append(Token("end", "", n))
    return toks


def _bad(token: str, what: str, pos: int) -> None:
    raise FormulaError(
        f"{what} {token!r} at position {pos} is not allowed in a model formula", token=token
    )


# ---------------------------------------------------------------------------------------------
# Parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0

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

    def formula(self) -> Formula:
        lhs = None
        if not self.at("~"):
            lhs = self.bars()
        if not self.at("~"):
            tok = self.peek()
            if tok.kind == "end":
                raise FormulaError(
                    f"formula {self.text!r} has no '~' (expected e.g. 'y ~ x + (1 | g)')",
                    token=None,
                )
            raise FormulaError(
                f"unexpected {tok.text!r} at position {tok.pos} of formula {self.text!r}",
                token=tok.text,
            )
        self.take()
        rhs = self.bars()
        tok = self.peek()
        if tok.kind != "end":
            raise FormulaError(
                f"unexpected {tok.text!r} at position {tok.pos} of formula {self.text!r}",
                token=tok.text,
            )
        return Formula(lhs, rhs)

    def bars(self) -> Node:
        node = self.sum()
        while self.at("|", "||"):
            op = self.take().text
            node = BinOp(op, node, self.sum())
        return node

    def sum(self) -> Node:
        node = self.prod()
        while self.at("+", "-"):
            op = self.take().text
            node = BinOp(op, node, self.prod())
        return node

    def prod(self) -> Node:
        node = self.special()
        while self.at("*", "/"):
            op = self.take().text
            node = BinOp(op, node, self.special())
        return node

    def special(self) -> Node:
        node = self.colon()
        while self.at("%in%"):
            self.take()
            node = BinOp("%in%", node, self.colon())
        return node

    def colon(self) -> Node:
        node = self.unary()
        while self.at(":"):
            self.take()
            node = BinOp(":", node, self.unary())
        return node

    def unary(self) -> Node:
        if self.at("-", "+"):
            op = self.take().text
            return UnaryOp(op, self.unary())
        return self.power()

    def power(self) -> Node:
        base = self.primary()
        if self.at("^"):
            self.take()
            return BinOp("^", base, self.unary())  # right-associative, like R
        return base

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
            if self.at("("):
                self.take()
                args: list[Node] = []
                if not self.at(")"):
                    args.append(self.bars())
                    while self.at(","):
                        self.take()
                        args.append(self.bars())
                self.expect(")")
                return Call(tok.text, tuple(args))
            return Name(tok.text)
        if tok.kind == "op" and tok.text == "(":
            inner = self.bars()
            self.expect(")")
            return Paren(inner)
        found = tok.text or "end of formula"
        raise FormulaError(
            f"unexpected {found!r} at position {tok.pos} of formula {self.text!r}",
            token=tok.text or None,
        )


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

_SPACED = {"~", "|", "||", "+", "-", "*", "%in%"}


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
    """Text of `node` as R's deparse() prints it (spaces around + - * ~ |, none around / ^ :)."""
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
        sep = f" {node.op} " if node.op in _SPACED else node.op
        return f"{deparse(node.left)}{sep}{deparse(node.right)}"
    raise TypeError(f"not a formula node: {node!r}")


def walk(node: Node):
    """Yield `node` and every node below it."""
    yield node
    if isinstance(node, Call):
        for a in node.args:
            yield from walk(a)
    elif isinstance(node, BinOp):
        yield from walk(node.left)
        yield from walk(node.right)
    elif isinstance(node, UnaryOp):
        yield from walk(node.operand)
    elif isinstance(node, Paren):
        yield from walk(node.expr)
