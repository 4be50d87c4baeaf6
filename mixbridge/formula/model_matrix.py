"""Model matrices with R's semantics and column names, and lme4's rank-deficiency dropping.

Coding of a factor inside a term follows R's `TermCode` (src/library/stats/src/model.c): a factor
f in term T gets contrasts when T without f is contained in some earlier term (the empty set counts
as present: the intercept); otherwise it gets full dummy coding. Without an intercept, the first
factor found (terms in order, variables in order) gets full dummy coding. Interaction columns vary
the first variable fastest; names join the pieces with ':'.

Contrasts: treatment (first level is the baseline) for unordered factors, R's contr.poly
(.L, .Q, .C, ^4, ...) for ordered ones. `contrasts="bayes"` is arm's drop.baseline=FALSE: every
level of an unordered factor gets a dummy, and ordered factors get all k polynomial columns
including the normalized constant `^0` column (arm's contr.bayes.ordered).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixbridge.errors import DataError
from mixbridge.formula.evaluate import Factor, Numeric, Value
from mixbridge.formula.terms import Term, TermsInfo


def contr_poly(k: int, contrasts: bool = True, keep_constant: bool = False):
    """R's contr.poly(k): orthonormal polynomials in the scores 1..k, and column names.

    contrasts=True: columns .L, .Q, .C, ^4, ... (keep_constant: also the normalized "^0" column
    first, as arm's contr.bayes.ordered). contrasts=False: "^0" (all ones), "^1", ... .
    """
    scores = np.arange(1.0, k + 1.0)
    scores = scores - scores.mean()
    cols = [np.ones(k)]
    prev, cur = np.zeros(k), np.ones(k)
    for _ in range(1, k):
        a = float(np.dot(scores * cur, cur) / np.dot(cur, cur))
        b = float(np.dot(cur, cur) / np.dot(prev, prev)) if np.dot(prev, prev) > 0 else 0.0
        prev, cur = cur, (scores - a) * cur - b * prev
        cols.append(cur)
    z = np.column_stack([c / np.sqrt(np.dot(c, c)) for c in cols])
    names = [f"^{j}" for j in range(k)]
    if not contrasts:
        z[:, 0] = 1.0
        return z, names
    names[1 : min(4, k)] = [".L", ".Q", ".C"][: min(3, k - 1)]
    if keep_constant:
        return z, names
    return z[:, 1:], names[1:]


def factor_coding(f: Factor, full: bool, contrasts: str) -> tuple[np.ndarray, list[str]]:
    """The (levels x columns) coding matrix of a factor and its column suffixes.

    full=True is term code 2 (indicator columns for every level). With contrasts="bayes" (arm's
    drop.baseline=FALSE) unordered factors keep every level and ordered ones the "^0" column.
    """
    k = len(f.levels)
    if full:  # R's model.c builds indicator columns for full coding, ordered or not
        return np.eye(k), list(f.levels)
    if f.ordered:
        return contr_poly(k, contrasts=True, keep_constant=contrasts == "bayes")
    if contrasts == "bayes":
        return np.eye(k), list(f.levels)
    return np.eye(k)[:, 1:], list(f.levels[1:])


def term_codes(terms: list[Term], is_factor: list[bool], intercept: bool) -> list[dict[int, int]]:
    """R's factor codes per term: 1 = contrasts, 2 = full dummy coding (factors only matter)."""
    codes: list[dict[int, int]] = []
    for j, term in enumerate(terms):
        c: dict[int, int] = {}
        for v in term:
            rest = term - {v}
            if not rest or any(rest <= earlier for earlier in terms[:j]):
                c[v] = 1
            else:
                c[v] = 2
        codes.append(c)
    if not intercept:
        done = False
        for j, term in enumerate(terms):
            for v in sorted(term):
                if is_factor[v]:
                    codes[j][v] = 2
                    done = True
                    break
            if done:
                break
    return codes


@dataclass
class Design:
    """Everything needed to build the model matrix again (for new data): R's terms + xlev."""

    info: TermsInfo
    contrasts: str  # "treatment" or "bayes"
    codes: list[dict[int, int]]
    levels: dict[int, list[str]]  # factor variables: levels at fit time (R's xlev)
    ordered: dict[int, bool]
    names: list[str]  # all column names, before any rank-deficiency dropping

    @classmethod
    def from_values(cls, info: TermsInfo, values: dict[int, Value], contrasts: str) -> Design:
        used = sorted({v for t in info.terms for v in t})
        is_factor = [isinstance(values.get(i), Factor) for i in range(len(info.variables))]
        levels: dict[int, list[str]] = {}
        ordered: dict[int, bool] = {}
        for i in used:
            val = values[i]
            if isinstance(val, Factor):
                if len(val.levels) < 2:
                    name = info.var_names[i]
                    raise DataError(
                        f"factor {name!r} has {len(val.levels)} level(s) in the rows used "
                        f"({', '.join(val.levels) or 'none'}); contrasts can be applied only "
                        "to factors with 2 or more levels",
                        column=name,
                    )
                levels[i] = list(val.levels)
                ordered[i] = val.ordered
        codes = term_codes(info.terms, is_factor, info.intercept)
        design = cls(info, contrasts, codes, levels, ordered, [])
        _, design.names = design._build(values, n=None, names_only=True)
        return design

    def matrix(self, values: dict[int, Value], n: int) -> np.ndarray:
        x, _ = self._build(values, n=n, names_only=False)
        return x

    def _block(
        self, v: int, val: Value | None, code: int, n: int | None, names_only: bool
    ) -> tuple[np.ndarray | None, list[str]]:
        name = self.info.var_names[v]
        if v in self.levels:
            f = Factor(np.zeros(0, np.int32), self.levels[v], self.ordered[v])
            coding, suffixes = factor_coding(f, full=code == 2, contrasts=self.contrasts)
            cols = [name + s for s in suffixes]
            if names_only:
                return None, cols
            assert isinstance(val, Factor)
            block = np.full((n, coding.shape[1]), np.nan)
            ok = val.codes >= 0
            block[ok] = coding[val.codes[ok]]
            return block, cols
        assert isinstance(val, Numeric)
        if val.values.ndim == 2:
            # R names a one-column matrix by the variable alone: poly(x, 1), not poly(x, 1)1
            suffixes = val.colnames or []
            cols = [name] if len(suffixes) == 1 else [name + s for s in suffixes]
            return (None if names_only else val.values), cols
        return (None if names_only else val.values[:, None]), [name]

    def _build(
        self, values: dict[int, Value], n: int | None, names_only: bool
    ) -> tuple[np.ndarray | None, list[str]]:
        names: list[str] = []
        blocks: list[np.ndarray] = []
        if self.info.intercept:
            names.append("(Intercept)")
            if not names_only:
                blocks.append(np.ones((n, 1)))
        for term, code in zip(self.info.terms, self.codes, strict=True):
            mat: np.ndarray | None = None if names_only else np.ones((n, 1))
            cnames = [""]
            for v in sorted(term):
                block, bnames = self._block(v, values.get(v), code[v], n, names_only)
                # earlier variables vary fastest: new columns = for each b: for each old
                cnames = [f"{old}:{b}" if old else b for b in bnames for old in cnames]
                if not names_only:
                    with np.errstate(invalid="ignore", over="ignore"):  # inf*0: caught later
                        cols = [mat * block[:, [j]] for j in range(block.shape[1])]
                    mat = np.concatenate(cols, 1)
            names.extend(cnames)
            if not names_only:
                blocks.append(mat)
        if names_only:
            return None, names
        x = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0))
        return np.ascontiguousarray(x, dtype=np.float64), names


def rank_keep(x: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Columns kept by R's qr(X, tol, LAPACK=FALSE) (dqrdc2): indices in original order.

    Left to right, a column whose norm after orthogonalizing against the kept columns is below
    tol times its original norm is moved to the end, i.e. dropped; keep = pivot[1:rank].
    """
    n, p = x.shape
    basis = np.zeros((n, 0))
    keep: list[int] = []
    for j in range(p):
        col = x[:, j].astype(float)
        norm0 = float(np.linalg.norm(col))
        r = col.copy()
        for _ in range(2):  # Gram-Schmidt twice for a stable residual
            r = r - basis @ (basis.T @ r)
        rnorm = float(np.linalg.norm(r))
        if norm0 == 0.0 or rnorm < tol * norm0:
            continue
        keep.append(j)
        basis = np.column_stack([basis, r / rnorm])
    return np.asarray(keep, dtype=int)
