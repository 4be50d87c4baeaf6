"""Benchmark data: generated once per (model, size), stored as raw binary columns so that every
engine (Python, R through Rscript, the peers in their own venv) reads the identical numbers.

Only numpy is needed here (the peers' venv imports this file too).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BETA_LMM = (1.0, 0.5, -0.3, 0.2)


def lmm_data(n: int, G: int, seed: int = 1) -> dict[str, np.ndarray]:
    """y ~ x1 + x2 + x3 + (1|g): τ = 0.5, σ = 1, every group non-empty."""
    rng = np.random.default_rng(seed)
    g = rng.permutation(np.arange(n) % G).astype(np.int32)  # balanced-ish, all levels used
    x = rng.normal(size=(3, n))
    b = rng.normal(0.0, 0.5, G)
    y = BETA_LMM[0] + BETA_LMM[1] * x[0] + BETA_LMM[2] * x[1] + BETA_LMM[3] * x[2]
    y += b[g] + rng.normal(size=n)
    return {"y": y, "x1": x[0], "x2": x[1], "x3": x[2], "g": g}


def glmm_data(n: int, G: int, seed: int = 2) -> dict[str, np.ndarray]:
    """Binomial y ~ x1 + x2 + (1|g), logit link, τ = 0.8."""
    rng = np.random.default_rng(seed)
    g = rng.permutation(np.arange(n) % G).astype(np.int32)
    x = rng.normal(size=(2, n))
    b = rng.normal(0.0, 0.8, G)
    eta = -0.5 + 0.7 * x[0] - 0.4 * x[1] + b[g]
    y = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
    return {"y": y, "x1": x[0], "x2": x[1], "g": g}


def bayes_data(G: int, per_group: int = 10, seed: int = 3) -> dict[str, np.ndarray]:
    """Gaussian y ~ x + factor(g) with n = per_group·G rows."""
    rng = np.random.default_rng(seed)
    n = per_group * G
    g = rng.permutation(np.arange(n) % G).astype(np.int32)
    x = rng.normal(size=n)
    y = 0.3 + 0.8 * x + rng.normal(0.0, 0.7, G)[g] + rng.normal(size=n)
    return {"y": y, "x": x, "g": g}


def make(model: str, size: int, n_groups: int) -> dict[str, np.ndarray]:
    if model == "lmm":
        return lmm_data(size, n_groups)
    if model == "glmm":
        return glmm_data(size, n_groups)
    if model == "bayesglm":
        return bayes_data(n_groups)
    raise ValueError(model)


def write(directory: Path, cols: dict[str, np.ndarray], meta: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    kinds = {}
    for name, arr in cols.items():
        arr.tofile(directory / f"{name}.bin")
        kinds[name] = "int32" if arr.dtype == np.int32 else "float64"
    n = int(len(next(iter(cols.values()))))
    (directory / "meta.json").write_text(json.dumps({**meta, "n": n, "columns": kinds}))


def read(directory: Path) -> tuple[dict[str, np.ndarray], dict]:
    meta = json.loads((Path(directory) / "meta.json").read_text())
    cols = {
        name: np.fromfile(Path(directory) / f"{name}.bin", dtype=kind)
        for name, kind in meta["columns"].items()
    }
    return cols, meta
