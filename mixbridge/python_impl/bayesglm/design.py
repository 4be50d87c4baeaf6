"""The design interface between arm's iteration and its least-squares solvers.

A `Design` is the model matrix X (n x p) with the operations the IRLS loop needs; `solve` does
one augmented least-squares step (the data rows plus p prior pseudo-rows) and returns a
`Solution`. Implementations: `dense.DenseDesign` (Householder QR of the augmented matrix, like
lm.fit) and `blocked.BlockedDesign` (block elimination for a one-hot factor block);
`solver.make_design` picks one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Solution:
    """One augmented least-squares solve: coefficients, diag(V), mean_i x_i'Vx_i, V on demand
    (`full_v(scale)` = scale * V, p x p)."""

    b: np.ndarray
    diag_v: np.ndarray
    mean_leverage: float
    full_v: Callable[[float], np.ndarray]  # scale * V (p x p), formed only on demand


class Design(ABC):
    """A model matrix X (n x p) with the operations the IRLS loop needs."""

    n: int
    p: int

    @abstractmethod
    def matvec(self, b: np.ndarray) -> np.ndarray:
        """X b."""

    @abstractmethod
    def colmeans(self) -> np.ndarray:
        """colMeans(X) over all rows (the centred intercept's prior row)."""

    @abstractmethod
    def x_scales(self) -> np.ndarray:
        """arm's x.scale of every column (`column_scale`)."""

    @abstractmethod
    def set_leverage_rows(self, rows: np.ndarray) -> None:
        """Rows over which mean_i x_i'Vx_i is taken (arm: all rows; we drop zero weights)."""

    @abstractmethod
    def solve(
        self,
        good: np.ndarray,
        w: np.ndarray,
        z: np.ndarray,
        a: np.ndarray,
        m: np.ndarray,
        prior_row0: np.ndarray | None,
    ) -> Solution:
        """Minimise sum_good w^2 (z - x'b)^2 + sum_j a_j^2 (r_j'b - m_j)^2, r_j = e_j except
        r_0 = prior_row0 when given (the centred intercept)."""


def column_scale(x: np.ndarray) -> float:
    """arm's x.scale: 1 for a constant column, max - min for two distinct values, else 2 sd.

    The number of distinct values is found from min/max (no sort): same answer as unique().
    """
    nan = np.isnan(x)
    if nan.any():
        x = x[~nan]
    if x.size == 0:
        return 1.0
    lo, hi = x.min(), x.max()
    if lo == hi:
        return 1.0
    if np.all((x == lo) | (x == hi)):
        return float(hi - lo)
    return float(2.0 * np.std(x, ddof=1))
