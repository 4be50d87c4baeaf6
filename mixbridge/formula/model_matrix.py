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

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

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


def factor_suffixes(f: Factor, full: bool, contrasts: str) -> tuple[list[str], str]:
    """Column suffixes of a factor inside a term and its coding kind, in O(k) (no k x k matrix).

    kind: "full" (an indicator column per level), "treatment" (indicators of levels 2..k) or
    "poly" (ordered factors: contr.poly columns).
    """
    if full:  # R's model.c builds indicator columns for full coding, ordered or not
        return list(f.levels), "full"
    if f.ordered:
        k = len(f.levels)
        return contr_poly(k, contrasts=True, keep_constant=contrasts == "bayes")[1], "poly"
    if contrasts == "bayes":
        return list(f.levels), "full"
    return list(f.levels[1:]), "treatment"


def factor_coding(f: Factor, full: bool, contrasts: str) -> tuple[np.ndarray, list[str]]:
    """The (levels x columns) coding matrix of a factor and its column suffixes.

    full=True is term code 2 (indicator columns for every level). With contrasts="bayes" (arm's
    drop.baseline=FALSE) unordered factors keep every level and ordered ones the "^0" column.
    Dense k x k: only for small factors; the model matrices use `factor_suffixes` + indices.
    """
    k = len(f.levels)
    suffixes, kind = factor_suffixes(f, full, contrasts)
    if kind == "poly":
        return contr_poly(k, contrasts=True, keep_constant=contrasts == "bayes")
    return (np.eye(k) if kind == "full" else np.eye(k)[:, 1:]), suffixes


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

    def column_views(self, values: dict[int, Value]) -> list[np.ndarray | None] | None:
        """The columns of X without building it, when each is the intercept (None) or a plain
        numeric variable (its own vector, not a copy); None for any other design."""
        cols: list[np.ndarray | None] = [None] if self.info.intercept else []
        for term in self.info.terms:
            if len(term) != 1:
                return None
            (v,) = term
            val = values.get(v)
            if v in self.levels or not isinstance(val, Numeric) or val.values.ndim != 1:
                return None
            cols.append(np.asarray(val.values, dtype=float))
        return cols if len(cols) == len(self.names) else None

    def column_totals(self, values: dict[int, Value]) -> list[float | None]:
        """Each plain numeric column's sum where its finiteness pass already took it (None:
        unknown or the intercept), aligned with `column_views`."""
        totals: list[float | None] = [None] if self.info.intercept else []
        for term in self.info.terms:
            val = values.get(next(iter(term))) if len(term) == 1 else None
            totals.append(val.total if isinstance(val, Numeric) else None)
        return totals

    def sparse_matrix(self, values: dict[int, Value], n: int) -> sp.csc_matrix:
        """The same matrix as `matrix`, as scipy.sparse CSC: a factor with G levels costs O(n)
        entries, never an n x G array (interactions are row-wise Kronecker products)."""
        blocks: list[sp.csc_matrix] = []
        if self.info.intercept:
            blocks.append(sp.csc_matrix(np.ones((n, 1))))
        for term, code in zip(self.info.terms, self.codes, strict=True):
            mat: sp.csr_matrix | None = None
            for v in sorted(term):
                block = self._sparse_block(v, values.get(v), code[v], n)
                mat = block if mat is None else _row_kronecker(mat, block)
            if mat is not None:
                blocks.append(mat.tocsc())  # all-CSC blocks: hstack just concatenates
        x = sp.hstack(blocks, format="csc") if blocks else sp.csc_matrix((n, 0))
        assert x.shape[1] == len(self.names), (x.shape, len(self.names))
        return x

    def _factor(self, v: int, code: int) -> tuple[Factor, list[str], str]:
        f = Factor(np.zeros(0, np.int32), self.levels[v], self.ordered[v])
        suffixes, kind = factor_suffixes(f, full=code == 2, contrasts=self.contrasts)
        return f, suffixes, kind

    def _block(
        self, v: int, val: Value | None, code: int, n: int | None, names_only: bool
    ) -> tuple[np.ndarray | None, list[str]]:
        name = self.info.var_names[v]
        if v in self.levels:
            f, suffixes, kind = self._factor(v, code)
            cols = [name + s for s in suffixes]
            if names_only:
                return None, cols
            assert isinstance(val, Factor) and n is not None
            ok = val.codes >= 0
            if kind == "poly":
                coding, _ = factor_coding(f, full=False, contrasts=self.contrasts)
                block = np.full((n, coding.shape[1]), np.nan)
                block[ok] = coding[val.codes[ok]]
                return block, cols
            # indicator columns by index (no k x k coding matrix); missing level: a NaN row
            block = np.zeros((n, len(suffixes)))
            block[~ok] = np.nan
            col = val.codes.astype(np.intp) - (1 if kind == "treatment" else 0)
            hit = ok & (col >= 0)
            block[np.flatnonzero(hit), col[hit]] = 1.0
            return block, cols
        assert isinstance(val, Numeric)
        if val.values.ndim == 2:
            # R names a one-column matrix by the variable alone: poly(x, 1), not poly(x, 1)1
            suffixes = val.colnames or []
            cols = [name] if len(suffixes) == 1 else [name + s for s in suffixes]
            return (None if names_only else val.values), cols
        return (None if names_only else val.values[:, None]), [name]

    def _sparse_block(self, v: int, val: Value | None, code: int, n: int) -> sp.csr_matrix:
        if v in self.levels:
            assert isinstance(val, Factor)
            _, suffixes, kind = self._factor(v, code)
            if kind == "poly":  # dense contr.poly coding (ordered factors are small)
                block, _ = self._block(v, val, code, n, names_only=False)
                return sp.csr_matrix(block)
            ok = val.codes >= 0
            col = val.codes.astype(np.intp) - (1 if kind == "treatment" else 0)
            hit = ok & (col >= 0)
            # at most one entry per row: CSR arrays directly, O(n), no COO sort
            indptr = np.concatenate([[0], np.cumsum(hit)])
            x = sp.csr_matrix(
                (np.ones(int(indptr[-1])), col[hit], indptr), shape=(n, len(suffixes))
            )
            if not ok.all():  # a missing level (new data): NaN row, as the dense matrix
                x = x.tolil()
                x[np.flatnonzero(~ok), :] = np.nan
                x = x.tocsr()
            return x
        assert isinstance(val, Numeric)
        return sp.csr_matrix(np.asarray(val.values, dtype=float).reshape(n, -1))

    def _build(
        self, values: dict[int, Value], n: int | None, names_only: bool
    ) -> tuple[np.ndarray | None, list[str]]:
        names: list[str] = []
        blocks: list[np.ndarray] = []
        if self.info.intercept:
            names.append("(Intercept)")
            if not names_only:
                blocks.append(np.broadcast_to(1.0, (n, 1)))  # no n-vector of ones built
        for term, code in zip(self.info.terms, self.codes, strict=True):
            mat: np.ndarray | None = None
            cnames = [""]
            for v in sorted(term):
                block, bnames = self._block(v, values.get(v), code[v], n, names_only)
                # earlier variables vary fastest: new columns = for each b: for each old
                cnames = [f"{old}:{b}" if old else b for b in bnames for old in cnames]
                if names_only:
                    continue
                if mat is None:
                    mat = block
                else:
                    with np.errstate(invalid="ignore", over="ignore"):  # inf*0: caught later
                        cols = [mat * block[:, [j]] for j in range(block.shape[1])]
                    mat = np.concatenate(cols, 1)
            names.extend(cnames)
            if not names_only:
                blocks.append(np.broadcast_to(1.0, (n, 1)) if mat is None else mat)
        if names_only:
            return None, names
        # column-major: per-column work (finiteness, ranges, scale checks) reads contiguous
        # memory, and each block is copied in once
        x = np.empty((n, sum(b.shape[1] for b in blocks)), order="F")
        pos = 0
        for b in blocks:
            x[:, pos : pos + b.shape[1]] = b
            pos += b.shape[1]
        return x, names


def _row_kronecker(a: sp.csr_matrix, b: sp.csr_matrix) -> sp.csr_matrix:
    """Row-wise Kronecker product in R's interaction column order: column (j of b, i of a) is
    j * ncol(a) + i (earlier variables vary fastest)."""
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    n = a.shape[0]
    na, nb = np.diff(a.indptr), np.diff(b.indptr)
    counts = na * nb
    row = np.repeat(np.arange(n), counts)
    # position of each product inside its row: a varies fastest
    k = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    na_row = np.maximum(na[row], 1)
    a_entry = a.indptr[row] + k % na_row
    b_entry = b.indptr[row] + k // na_row
    cols = b.indices[b_entry] * a.shape[1] + a.indices[a_entry]
    with np.errstate(invalid="ignore", over="ignore"):  # inf*0: caught by the finite check
        data = a.data[a_entry] * b.data[b_entry]
    return sp.csr_matrix((data, (row, cols)), shape=(n, a.shape[1] * b.shape[1]))


def rank_keep(x: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Columns kept by R's qr(X, tol, LAPACK=FALSE) (dqrdc2): indices in original order.

    Left to right, a column whose norm after orthogonalizing against the kept columns is below
    tol times its original norm is moved to the end, i.e. dropped; keep = pivot[1:rank].
    """
    n, p = x.shape
    if p and n >= p and _clearly_full_rank(x, tol):
        return np.arange(p)
    # kept directions as rows of one preallocated array (no re-copying as it grows); einsum's
    # single-threaded loops: these are matrix-vector products, for which multi-threaded BLAS
    # is several times slower on a busy machine (1e6 x 4: 0.4 s -> 0.15 s)
    basis = np.empty((p, n))
    keep: list[int] = []
    for j in range(p):
        col = np.array(x[:, j], dtype=float)
        norm0 = float(np.sqrt(np.einsum("i,i->", col, col)))
        r = col
        b = basis[: len(keep)]
        for _ in range(2):  # Gram-Schmidt twice for a stable residual
            r = r - np.einsum("k,kn->n", np.einsum("kn,n->k", b, r), b)
        rnorm = float(np.sqrt(np.einsum("i,i->", r, r)))
        if norm0 == 0.0 or rnorm < tol * norm0:
            continue
        basis[len(keep)] = r / rnorm
        keep.append(j)
    return np.asarray(keep, dtype=int)


def column_gram(
    columns: list[np.ndarray | None], n: int, totals: list[float | None] | None = None
) -> np.ndarray:
    """X'X from X's columns (None: the intercept), one dot product per pair. `totals`: column
    sums already known (None where not), which the intercept's row then takes as they are."""
    p = len(columns)
    known = totals if totals is not None else [None] * p
    gram = np.empty((p, p))
    for i, a in enumerate(columns):
        for j in range(i, p):
            b = columns[j]
            if a is None and b is None:
                v = float(n)
            elif a is None or b is None:
                t = known[j] if a is None else known[i]
                v = float(np.sum(b if a is None else a)) if t is None else t
            else:
                v = float(np.dot(a, b))
            gram[i, j] = gram[j, i] = v
    return gram


def assemble(columns: list[np.ndarray | None], n: int) -> np.ndarray:
    """X (column-major) from its columns (None: the intercept)."""
    x = np.empty((n, len(columns)), order="F")
    for j, c in enumerate(columns):
        x[:, j] = 1.0 if c is None else c
    return x


def clearly_full_rank_gram(gram: np.ndarray, tol: float = 1e-7) -> bool:
    """`_clearly_full_rank` from a precomputed X'X."""
    norms = np.sqrt(np.diag(gram))
    if not np.all(np.isfinite(gram)) or np.any(norms == 0.0):
        return False
    try:
        chol = np.linalg.cholesky(gram / np.outer(norms, norms))
    except np.linalg.LinAlgError:
        return False
    return bool(np.all(np.diag(chol) > 1000.0 * tol))


def _clearly_full_rank(x: np.ndarray, tol: float) -> bool:
    """True when every column keeps far more than `tol` of its norm after orthogonalizing against
    all earlier columns. Those fractions are the diagonal of the Cholesky factor of the
    column-scaled Gram matrix (one BLAS-3 pass over X). Squaring the condition number costs
    precision, so only fractions above 1e-4 (1000 x tol: Gram rounding is ~1e-6 relative there)
    count as clear; then dqrdc2 moves no column and keeps all. Anything else goes through the
    exact left-to-right emulation."""
    return clearly_full_rank_gram(x.T @ x, tol)


# ---------------------------------------------------------------------------------------------
# Finite values (a clear error naming the columns, as R would fail later with a vaguer one)


def check_finite(x: np.ndarray, names: list[str], what: str) -> None:
    """A DataError naming the columns of the model matrix `x` (`what`) with Inf/NaN values."""
    # a column's sum is finite unless the column has an Inf/NaN (or its sum overflows: those
    # few columns are then checked element by element)
    with np.errstate(over="ignore", invalid="ignore"):
        suspect = np.flatnonzero(~np.isfinite(x.sum(axis=0)))
    bad = np.zeros(x.shape[1], dtype=bool)
    for j in suspect:
        bad[j] = not np.isfinite(x[:, j]).all()
    if bad.any():
        cols = [names[j] for j in np.flatnonzero(bad)]
        raise DataError(
            f"column(s) {', '.join(map(repr, cols))} of the {what} have infinite values "
            "(e.g. log(0)); transform or filter the data",
            column=cols[0],
        )


def check_finite_columns(columns: list[np.ndarray | None], names: list[str], what: str) -> None:
    """`check_finite` on a model matrix given as its columns (None: the intercept)."""
    for c, name in zip(columns, names, strict=True):
        if c is not None and not math.isfinite(float(np.sum(c))) and not np.isfinite(c).all():
            raise DataError(
                f"column(s) {name!r} of the {what} have infinite values (e.g. log(0)); "
                "transform or filter the data",
                column=name,
            )


def check_finite_sparse(x: sp.csc_matrix, names: list[str], what: str) -> None:
    """`check_finite` on a sparse (CSC) model matrix."""
    bad = ~np.isfinite(x.data)
    if bad.any():
        cols = np.unique(np.repeat(np.arange(x.shape[1]), np.diff(x.indptr))[bad])
        raise DataError(
            f"column(s) {', '.join(repr(names[j]) for j in cols)} of the {what} have infinite "
            "values (e.g. log(0)); transform or filter the data",
            column=names[cols[0]],
        )
