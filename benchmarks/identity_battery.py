"""Identity battery: every number the Python lmer/glmer engine produces, saved for comparison.

Runs a fixed battery of fits (every structure of tests/designs.py SWEEP_STRUCTURES, REML/ML,
weights, offsets, the conformance suite's data sets, the O(G) lmer path, the big-data (1|g)
glmer path, nAGQ 0/1/AGQ, Dask fits, lmer_objective/glmer_objective) and records every MixedFit
field plus predict/simulate/objective outputs. Used to check that a restructuring changes no
number (issue 12):

    python benchmarks/identity_battery.py run OUT.pkl          # with the tree on PYTHONPATH
    python benchmarks/identity_battery.py compare BASE.pkl NEW.pkl

`compare` lists every value that is not bit-identical with its largest relative difference.
The R data sets are read through the bridge once and cached (`--data DIR`).
"""

from __future__ import annotations

import argparse
import math
import pickle
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


# ---------------------------------------------------------------------------------------------
# Data


def r_data(name: str, cache: Path) -> pd.DataFrame:
    path = cache / f"{name}.pkl"
    if path.exists():
        return pd.read_pickle(path)
    from mixbridge.bridge.datasets import load_r_dataset

    df = load_r_dataset(name, "lme4")
    cache.mkdir(parents=True, exist_ok=True)
    df.to_pickle(path)
    return df


def with_weights_offset(d: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return d.assign(w=rng.uniform(0.5, 2.0, len(d)), o=rng.normal(0.0, 0.2, len(d)))


def big_gaussian(n: int, groups: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    x = rng.normal(size=(3, n))
    y = 1 + x[0] - 0.5 * x[1] + 0.2 * x[2] + rng.normal(0, 0.5, groups)[g] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x1": x[0], "x2": x[1], "x3": x[2], "g": g})


def big_poisson(n: int, groups: int, seed: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    x = rng.normal(size=n)
    t = rng.uniform(0.5, 2.0, n)
    eta = np.log(t) + 0.2 + 0.4 * x + rng.normal(0, 0.6, groups)[g]
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)).astype(float), "x": x, "t": t, "g": g})


# ---------------------------------------------------------------------------------------------
# Recording a fit


def _plain(v: Any) -> Any:
    if isinstance(v, pd.DataFrame):
        return {"index": list(map(str, v.index)), "columns": list(map(str, v.columns)),
                "values": v.to_numpy(dtype=object)}  # fmt: skip
    if isinstance(v, pd.Series):
        return {"index": list(map(str, v.index)), "values": v.to_numpy()}
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.copy()
    if hasattr(v, "compute"):  # a Dask collection
        return {"dask": np.asarray(v.compute())}
    if isinstance(v, (str, int, float, bool, type(None), np.floating, np.integer, np.bool_)):
        return v
    return repr(type(v))


def record(fit: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in (
        "model", "formula", "family", "link", "reml", "fixef", "vcov", "theta", "theta_names",
        "varcorr", "sigma", "ranef", "cond_var", "loglik", "df", "deviance", "reml_criterion",
        "aic", "bic", "nobs", "ngroups", "fitted", "residuals", "singular", "converged", "nagq",
        "optimizer", "dropped_columns", "engine",
    ):  # fmt: skip
        out[name] = _plain(getattr(fit, name))
    out["messages"] = [(m.kind, m.text, m.origin, m.code) for m in fit.messages]
    out["vcov_rx"] = _plain(getattr(fit, "vcov_rx", None))
    const = getattr(fit, "loglik_constant", None)
    if const is None:
        const = fit.extra.get("lme4_loglik_constant", 0.0)
    out["loglik_constant"] = const
    out["criterion"] = fit.criterion
    return out


def behaviour(fit: Any, data: pd.DataFrame, re_forms: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def attempt(key: str, fn: Any) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[key] = _plain(fn())
        except Exception as exc:  # recorded: an error is a behaviour too
            out[key] = f"ERROR {type(exc).__name__}: {exc}"

    params = [fit.theta] if fit.model == "lmer" else [fit.theta, fit.fixef.to_numpy()]
    attempt("objective_at_fit", lambda: fit.objective(*params))
    bumped = [np.where(np.asarray(p) == 0, 0.05, np.asarray(p) * 1.03) for p in params]
    attempt("objective_bumped", lambda: fit.objective(*bumped))
    attempt("predict", lambda: fit.predict())
    attempt("predict_response", lambda: fit.predict(type="response"))
    head = data.head(25)
    attempt("predict_newdata", lambda: fit.predict(head))
    attempt("predict_newdata_response", lambda: fit.predict(head, type="response"))
    for rf in re_forms:
        attempt(f"predict_re_form:{rf}", lambda rf=rf: fit.predict(head, re_form=rf))
        attempt(f"predict_re_form_fit:{rf}", lambda rf=rf: fit.predict(re_form=rf))
    attempt("simulate", lambda: fit.simulate(2, seed=11))
    return out


# ---------------------------------------------------------------------------------------------
# The battery


def cases(data_dir: Path, quick: bool) -> list[tuple[str, Any]]:
    import designs

    import mixbridge

    out: list[tuple[str, Any]] = []

    def lmer_case(key, formula, d, re_forms=(None, "~0"), **kw):
        def run():
            fit = mixbridge.lmer(formula, d, **kw)
            return fit, d, list(re_forms)

        out.append((key, run))

    def glmer_case(key, formula, d, re_forms=(None, "~0"), **kw):
        def run():
            fit = mixbridge.glmer(formula, d, **kw)
            return fit, d, list(re_forms)

        out.append((key, run))

    seeds = [0, 1] if quick else [0, 1, 3]
    for structure, bars in designs.SWEEP_STRUCTURES.items():
        groups = sorted({b.split("|")[1].strip(" )") for b in bars.split("+") if "|" in b})
        forms = [None, "~0"] + [f"~(1 | {g.split('/')[0]})" for g in groups[:1]]
        if structure in ("corr_slope", "diag_slope", "three_terms"):
            forms.append("~(x | g)")
        for seed in seeds:
            d, f, _ = designs.sweep_design(structure, seed)
            for reml in (True, False):
                lmer_case(f"lmer/{structure}/{seed}/{reml}", f, d, forms, reml=reml)
            dw = with_weights_offset(d, seed)
            lmer_case(f"lmer/{structure}/{seed}/wo", f, dw, forms, weights="w", offset="o")
            for family in ("binomial", "poisson"):
                d, f, _ = designs.sweep_design(structure, seed, family)
                glmer_case(f"glmer/{structure}/{seed}/{family}", f, d, forms, family=family)
            if seed == seeds[0]:
                d, f, _ = designs.sweep_design(structure, seed, "poisson")
                dw = with_weights_offset(d, seed)
                glmer_case(f"glmer/{structure}/{seed}/poisson/wo", f, dw, forms,
                           family="poisson", weights="w", offset="o")  # fmt: skip
                glmer_case(f"glmer/{structure}/{seed}/poisson/nagq0", f, d, forms,
                           family="poisson", nagq=0)  # fmt: skip
    for seed in range(6):
        d, f = designs.random_design(seed)
        lmer_case(f"lmer/random_design/{seed}", f, d)

    sleep = r_data("sleepstudy", data_dir)
    for f in ["Reaction ~ Days + (Days | Subject)", "Reaction ~ Days + (Days || Subject)",
              "Reaction ~ Days + (1 | Subject)"]:  # fmt: skip
        for reml in (True, False):
            forms = (None, "~0", "~(1 | Subject)", "~(0 + Days | Subject)")
            lmer_case(f"sleepstudy/{f}/{reml}", f, sleep, forms, reml=reml)
    lmer_case("sleepstudy/ctrl", "Reaction ~ Days + (1 | Subject)", sleep,
              control={"calc_derivs": False})  # fmt: skip
    lmer_case("sleepstudy/start", "Reaction ~ Days + (Days | Subject)", sleep,
              control={"start": [0.9, 0.1, 0.2], "maxeval": 500})  # fmt: skip
    for name, f in [("Dyestuff", "Yield ~ 1 + (1 | Batch)"),
                    ("Dyestuff2", "Yield ~ 1 + (1 | Batch)"),
                    ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
                    ("Pastes", "strength ~ 1 + (1 | batch/cask)")]:  # fmt: skip
        d = r_data(name, data_dir)
        rf = (None, "~0", "~(1 | plate)") if name == "Penicillin" else (None, "~0")
        for reml in (True, False):
            lmer_case(f"{name}/{reml}", f, d, rf, reml=reml)
    cbpp = r_data("cbpp", data_dir)
    cf = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    for nagq in (0, 1, 25):
        glmer_case(f"cbpp/{nagq}", cf, cbpp, (None, "~0", "~(1 | herd)"), family="binomial",
                   nagq=nagq)  # fmt: skip
    for link in ("probit", "cloglog"):
        glmer_case(f"cbpp/{link}", cf, cbpp, family="binomial", link=link)
    cbpp2 = cbpp.assign(obs=[f"o{i}" for i in range(len(cbpp))])
    glmer_case("cbpp/obs", "cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs)",
               cbpp2, (None, "~0", "~(1 | herd)", "~(1 | obs)"), family="binomial")  # fmt: skip
    grouse = r_data("grouseticks", data_dir)
    gf = "TICKS ~ YEAR + cHEIGHT + (1 | BROOD)"
    for nagq in (1, 10):
        glmer_case(f"grouseticks/{nagq}", gf, grouse, family="poisson", nagq=nagq)
    glmer_case("grouseticks/two", "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", grouse,
               (None, "~0", "~(1 | BROOD)", "~(1 | LOCATION)"), family="poisson")  # fmt: skip
    if not quick:
        glmer_case("grouseticks/three",
                   "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)", grouse,
                   (None, "~0", "~(1 | BROOD)", "~(1 | LOCATION)"), family="poisson")  # fmt: skip
        va = r_data("VerbAgg", data_dir)
        glmer_case("VerbAgg", "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", va,
                   (None, "~0", "~(1 | id)"), family="binomial")  # fmt: skip
        ie = r_data("InstEval", data_dir)
        lmer_case("InstEval", "y ~ service + (1 | s) + (1 | d) + (1 | dept)", ie,
                  (None, "~0", "~(1 | d)"), reml=True)  # fmt: skip
    # O(G) lmer path, and the same model through the general path (control given)
    bg = big_gaussian(200_000 if not quick else 60_000, 10_000 if not quick else 3_000)
    for reml in (True, False):
        lmer_case(f"lmer_og/{reml}", "y ~ x1 + x2 + x3 + (1 | g)", bg, reml=reml)
    bgw = with_weights_offset(bg, 9)
    lmer_case("lmer_og/wo", "y ~ x1 + x2 + x3 + (1 | g)", bgw, weights="w", offset="o")
    lmer_case("lmer_og/ctrl", "y ~ x1 + x2 + x3 + (1 | g)", bg.head(20_000),
              control={"boundary_tol": 1e-5})  # fmt: skip
    lmer_case("lmer_og/condvar", "y ~ x1 + x2 + x3 + (1 | g)", bg.head(20_000),
              control={"cond_var": False})  # fmt: skip
    # big-data glmer (1|g) path
    bb = designs.big_binomial(60_000, 3_000)
    for nagq in (1, 5):
        glmer_case(f"glmer_big/binomial/{nagq}", "yb ~ x1 + x2 + (1 | g)", bb,
                   (None, "~0", "~(1 | g)"), family="binomial", nagq=nagq)  # fmt: skip
    bp = big_poisson(60_000, 4_000)
    glmer_case("glmer_big/poisson", "y ~ x + offset(log(t)) + (1 | g)", bp, family="poisson")
    glmer_case("glmer_big/tol", "yb ~ x1 + x2 + (1 | g)", bb.head(20_000), family="binomial",
               control={"tol_pwrss": 1e-12})  # fmt: skip
    return out


def objective_cases(data_dir: Path) -> dict[str, Any]:
    import mixbridge

    out: dict[str, Any] = {}
    sleep = r_data("sleepstudy", data_dir)
    cbpp = r_data("cbpp", data_dir)
    cf = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    calls = {
        "lmer_obj/slope": lambda: mixbridge.lmer_objective(
            "Reaction ~ Days + (Days | Subject)", sleep, theta=[0.9, 0.05, 0.2]),
        "lmer_obj/ml": lambda: mixbridge.lmer_objective(
            "Reaction ~ Days + (1 | Subject)", sleep, theta=[0.7], reml=False),
        "glmer_obj/1": lambda: mixbridge.glmer_objective(
            cf, cbpp, theta=[0.6], beta=[-1.4, -1.0, -1.1, -1.6], family="binomial"),
        "glmer_obj/25": lambda: mixbridge.glmer_objective(
            cf, cbpp, theta=[0.6], beta=[-1.4, -1.0, -1.1, -1.6], family="binomial", nagq=25),
        "glmer_obj/0": lambda: mixbridge.glmer_objective(
            cf, cbpp, theta=[0.6], beta=[0.0], family="binomial", nagq=0),
        "glmer_obj/tol": lambda: mixbridge.glmer_objective(
            cf, cbpp, theta=[0.6], beta=[-1.4, -1.0, -1.1, -1.6], family="binomial",
            control={"tol_pwrss": 1e-12}),
    }  # fmt: skip
    for key, fn in calls.items():
        try:
            out[key] = float(fn())
        except Exception as exc:
            out[key] = f"ERROR {type(exc).__name__}: {exc}"
    return out


def dask_cases() -> dict[str, Any]:
    import dask
    import dask.dataframe as dd

    import mixbridge

    out: dict[str, Any] = {}
    bg = big_gaussian(30_000, 1_000, seed=5)
    bg["f"] = np.where(bg["x3"] > 0, "hi", "lo")
    bg = with_weights_offset(bg, 5)
    ddf = dd.from_pandas(bg, npartitions=4)
    with dask.config.set(scheduler="sync"):
        for key, kw in [("dask/reml", {}), ("dask/ml", {"reml": False}),
                        ("dask/wo", {"weights": "w", "offset": "o"})]:  # fmt: skip
            fit = mixbridge.lmer("y ~ x1 + x2 + f + (1 | g)", ddf, **kw)
            out[key] = {"fit": record(fit), "objective": fit.objective(fit.theta * 1.1)}
    return out


def run(path: Path, data_dir: Path, quick: bool, only: str | None) -> None:
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    for key, fn in cases(data_dir, quick):
        if only and only not in key:
            continue
        t = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit, d, forms = fn()
            results[key] = {"fit": record(fit), "behaviour": behaviour(fit, d, forms)}
        except Exception as exc:
            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        print(f"{key}: {time.perf_counter() - t:.2f} s", flush=True)
    if not only:
        results["objectives"] = objective_cases(data_dir)
        results["dask"] = dask_cases()
    results["_seconds"] = time.perf_counter() - t0
    path.write_bytes(pickle.dumps(results))
    print(f"{len(results)} entries in {results['_seconds']:.0f} s -> {path}")


# ---------------------------------------------------------------------------------------------
# Comparing two runs


def _diff(a: Any, b: Any, where: str, out: list[tuple[str, float, str]]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                side = "base" if k not in a else "new"
                out.append((f"{where}.{k}", math.inf, f"missing in {side}"))
                continue
            _diff(a[k], b[k], f"{where}.{k}", out)
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append((where, math.inf, f"length {len(a)} vs {len(b)}"))
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, f"{where}[{i}]", out)
        return
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            out.append((where, math.inf, f"shape {a.shape} vs {b.shape}"))
            return
        if a.dtype == object or b.dtype == object:
            for i, (x, y) in enumerate(zip(a.ravel(), b.ravel(), strict=True)):
                _diff(x, y, f"{where}[{i}]", out)
            return
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            fa, fb = a.astype(float), b.astype(float)
            same = (fa == fb) | (np.isnan(fa) & np.isnan(fb))
            if not same.all():
                scale = np.maximum(np.abs(fa), np.abs(fb))
                with np.errstate(invalid="ignore", divide="ignore"):
                    rel = np.where(same, 0.0, np.abs(fa - fb) / np.where(scale > 0, scale, 1.0))
                out.append((where, float(np.nanmax(rel)), f"{int((~same).sum())} values"))
            return
        if not np.array_equal(a, b):
            out.append((where, math.inf, "differs"))
        return
    if isinstance(a, (float, np.floating)) or isinstance(b, (float, np.floating)):
        if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
            if a != b:
                out.append((where, math.inf, f"{a!r} vs {b!r}"))
            return
        fa, fb = float(a), float(b)
        if fa == fb or (math.isnan(fa) and math.isnan(fb)):
            return
        scale = max(abs(fa), abs(fb))
        out.append((where, abs(fa - fb) / scale if scale else math.inf, f"{fa!r} vs {fb!r}"))
        return
    if a != b:
        out.append((where, math.inf, f"{str(a)[:150]!r} vs {str(b)[:150]!r}"))


def compare(base: Path, new: Path, tol: float) -> int:
    a = pickle.loads(base.read_bytes())
    b = pickle.loads(new.read_bytes())
    a.pop("_seconds", None)
    b.pop("_seconds", None)
    diffs: list[tuple[str, float, str]] = []
    _diff(a, b, "", diffs)
    n_fits = sum(1 for k in a if "/" in k)
    print(f"{n_fits} fits compared; {len(diffs)} values not bit-identical")
    worst = 0
    for where, rel, note in diffs:
        flag = "" if rel <= tol else "  <-- above tolerance"
        print(f"{where}: rel {rel:.3g} ({note}){flag}")
        worst += rel > tol
    print(f"{worst} above {tol:g} relative")
    return 1 if worst else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--data", type=Path, default=Path("/tmp/mixbridge_battery_data"))
    r.add_argument("--quick", action="store_true")
    r.add_argument("--only")
    c = sub.add_parser("compare")
    c.add_argument("base", type=Path)
    c.add_argument("new", type=Path)
    c.add_argument("--tol", type=float, default=1e-12)
    args = p.parse_args(argv)
    if args.cmd == "run":
        run(args.out, args.data, args.quick, args.only)
        return 0
    return compare(args.base, args.new, args.tol)


if __name__ == "__main__":
    raise SystemExit(main())
