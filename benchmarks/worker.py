"""Times one engine on one data set in a fresh process: `python worker.py ENGINE MODEL DIR REPS`.

Prints one JSON object: the times of each repeat and their median, the peak memory of the fit
(VmHWM after the fits minus the resident size just before them, MB), the estimates (checked
by run.py against lme4/arm in the same run) and, for the R bridge, nothing else: transfer time is
derived in run.py as (bridge time - fit time inside R). A warm-up fit on a few rows first keeps
imports, R start-up and package loading out of the timings.

Runs under the project venv (mixbridge, statsmodels, floor) or the peers' venv (glmm, mixedlm-rs,
mixedlm): each engine imports only what it needs.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

FORMULAS = {
    "lmm": "y ~ x1 + x2 + x3 + (1|g)",
    "glmm": "y ~ x1 + x2 + (1|g)",
    "bayesglm": "y ~ x + g",
}


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hwm_mb() -> float:
    """Peak RSS of this process image (VmHWM: reset at exec, unlike ru_maxrss, which a child
    inherits from the parent that forked it)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def frame(cols: dict[str, np.ndarray], categorical_ids: bool = True):
    import pandas as pd

    df = pd.DataFrame({k: v for k, v in cols.items() if k != "g"})
    if not categorical_ids:
        df["g"] = cols["g"]
        return df
    G = int(cols["g"].max()) + 1
    # Levels "0".."G-1" in numeric order: R's factor() of the integer codes has the same order.
    df["g"] = pd.Categorical.from_codes(cols["g"], [str(i) for i in range(G)])
    return df


def tiny(cols: dict[str, np.ndarray], n: int = 400) -> dict[str, np.ndarray]:
    """All rows of the first few groups (at most n rows), codes renumbered: for warm-up fits."""
    g = cols["g"]
    rows = np.flatnonzero(g < 20)[:n]
    if np.unique(g[rows]).size < 2 or rows.size <= np.unique(g[rows]).size:
        rows = np.arange(min(n, g.size))
    out = {k: v[rows].copy() for k, v in cols.items()}
    _, out["g"] = np.unique(out["g"], return_inverse=True)
    out["g"] = out["g"].astype(np.int32)
    return out


# ---------------------------------------------------------------------------------------------
# Engines: each returns fit(cols) -> estimates dict


def mixed_estimates(fit) -> dict:
    return {
        "fixef": fit.fixef.to_numpy().tolist(),
        "fixef_names": list(fit.fixef.index),
        "theta": np.asarray(fit.theta).tolist(),
        "sigma": float(fit.sigma),
        "criterion": float(fit.criterion),
    }


def engine_mixbridge(model: str, transport: str | None = None):
    import mixbridge

    kw = {} if transport is None else {"engine": "r", "transport": transport}

    def run(df):
        if model == "lmm":
            return mixed_estimates(mixbridge.lmer(FORMULAS[model], df, reml=True, **kw))
        if model == "glmm":
            fit = mixbridge.glmer(FORMULAS[model], df, family="binomial", **kw)
            return mixed_estimates(fit)
        if model == "bayesglm":
            fit = mixbridge.bayesglm(FORMULAS[model], df, family="gaussian", **kw)
            return {
                "coef": fit.coef.to_numpy().tolist(),
                "coef_names": list(fit.coef.index),
                "dispersion": float(fit.dispersion),
            }
        raise ValueError(model)

    # the DataFrame is the user's data, built before timing; integer ids stay integers (R's
    # factor() of them has the same levels, in the same order, as the categorical frame)
    run.prepare = lambda cols: frame(cols, categorical_ids=model == "bayesglm")
    return run


def engine_core(model: str):
    """The O(G) core on raw columns: one pass + 1-D fit + ranef (no formula, no pandas)."""
    from mixbridge.python_impl.group_stats import group_stats_columns
    from mixbridge.python_impl.lmm_scalar import scalar_ri_fit

    assert model == "lmm"

    def run(cols):
        G = int(cols["g"].max()) + 1
        stats = group_stats_columns(
            [cols["x1"], cols["x2"], cols["x3"]], cols["y"], None, cols["g"], G
        )
        res = scalar_ri_fit(stats, reml=True)
        return {
            "fixef": res.beta.tolist(),
            "theta": [res.theta],
            "sigma": res.sigma,
            "criterion": res.criterion,
            "n_ranef": int(res.b.size),
        }

    return run


def engine_floor(model: str):
    """The numpy one-pass floor: group sums of y and of every x column via bincount."""

    def run(cols):
        g = cols["g"]
        G = int(g.max()) + 1
        sums = [np.bincount(g, minlength=G)]
        sums += [np.bincount(g, weights=v, minlength=G) for k, v in cols.items() if k != "g"]
        return {"n_sums": len(sums)}

    return run


def _sm_like(MixedLM):
    def run(cols):
        n = cols["y"].shape[0]
        X = np.column_stack([np.ones(n), cols["x1"], cols["x2"], cols["x3"]])
        res = MixedLM(cols["y"], X, groups=cols["g"]).fit(reml=True)
        scale = float(res.scale)
        cov_re = float(np.asarray(res.cov_re).ravel()[0])
        return {
            "fixef": np.asarray(res.fe_params).ravel().tolist(),
            "theta": [float(np.sqrt(max(cov_re, 0.0) / scale))],
            "sigma": float(np.sqrt(scale)),
        }

    return run


def engine_statsmodels(model: str):
    assert model == "lmm"
    from statsmodels.regression.mixed_linear_model import MixedLM

    return _sm_like(MixedLM)


def engine_mixedlm_rs(model: str):
    assert model == "lmm"
    from mixedlm_rs import MixedLM

    return _sm_like(MixedLM)


def engine_glmm(model: str):
    import glmm

    def run(data):
        if model == "lmm":
            f = glmm.fit(data, FORMULAS[model], reml=True, satterthwaite=False)
            disp = float(f.dispersion)
            tau2 = float(np.asarray(f.varcorr[0]).ravel()[0])
            return {
                "fixef": np.asarray(f.beta).tolist(),
                "theta": [float(np.sqrt(tau2 / disp))],
                "sigma": float(np.sqrt(disp)),
            }
        f = glmm.fit(data, FORMULAS[model], family="binomial")
        tau2 = float(np.asarray(f.varcorr[0]).ravel()[0])
        return {
            "fixef": np.asarray(f.beta).tolist(),
            "theta": [float(np.sqrt(tau2))],
            "criterion": float(f.deviance),  # −2 logLik (Laplace), lme4's scale
        }

    # its API takes a dict of columns (int64 ids): built before timing
    run.prepare = lambda cols: {k: v if k != "g" else v.astype(np.int64) for k, v in cols.items()}
    return run


def engine_mixedlm(model: str):
    import mixedlm

    def run(df):
        if model == "lmm":
            f = mixedlm.lmer(FORMULAS[model], df, REML=True)
            return {
                "fixef": np.asarray(f.beta).tolist(),
                "theta": np.asarray(f.theta).tolist(),
                "sigma": float(f.sigma),
            }
        if model == "glmm":
            f = mixedlm.glmer(FORMULAS[model], df)  # default family: binomial (logit)
            return {
                "fixef": np.asarray(f.beta).tolist(),
                "theta": np.asarray(f.theta).tolist(),
                "criterion": -2.0 * float(f.logLik().value),
            }
        raise ValueError(f"mixedlm: no {model} in this benchmark")

    run.prepare = frame  # its API takes a DataFrame: built before timing, as for mixbridge
    return run


ENGINES = {
    "mixbridge": lambda m: engine_mixbridge(m),
    "mixbridge-core": engine_core,
    "bridge-embedded": lambda m: engine_mixbridge(m, "embedded"),
    "bridge-subprocess": lambda m: engine_mixbridge(m, "subprocess"),
    "floor": engine_floor,
    "statsmodels": engine_statsmodels,
    "mixedlm-rs": engine_mixedlm_rs,
    "glmm": engine_glmm,
    "mixedlm": engine_mixedlm,
}


def main() -> None:
    engine, model, directory, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    cap = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0  # stop repeating after this long
    out: dict = {"engine": engine, "model": model, "dir": directory}
    try:
        run = ENGINES[engine](model)
        cols, meta = datasets.read(Path(directory))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the data in the container the engine's API takes (DataFrame, dict), made before
            # timing and before the memory baseline: users already hold their data that way
            prepare = getattr(run, "prepare", lambda c: c)
            if engine != "floor":
                run(prepare(tiny(cols)))  # warm-up: imports, R start-up, first-call costs
            data = prepare(cols)
            base = rss_mb()
            times, est = [], None
            for _ in range(repeats):
                t = time.perf_counter()
                est = run(data)
                times.append(time.perf_counter() - t)
                if sum(times) > cap:
                    break
        peak = hwm_mb()
        out.update(
            times=times,
            median=float(np.median(times)),
            peak_mb=max(peak - base, 0.0),
            estimates=est,
        )
    except Exception as exc:  # reported in the table, never hidden
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
