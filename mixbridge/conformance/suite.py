"""Conformance suites: a list of cases (data, formula, model, options, two engines) run through
`compare`. The built-in suite is suites/builtin.toml; users write their own in the same TOML form:

    [[case]]
    name = "sleepstudy_slope"          # unique
    model = "lmer"                     # lmer | glmer | bayesglm | shrinkage
    formula = "Reaction ~ Days + (Days | Subject)"
    data = "r:lme4/sleepstudy"         # r:<package>/<dataset> | sim:<generator> | file.csv/.parquet
    reml = true                        # other keys are passed to the fitting call
    engine_a = "python"                # candidate (default "python")
    engine_b = "r"                     # reference (default "r"); "r:subprocess" picks the transport
    options_b = { reml = false }       # optional per-engine overrides (options_a likewise)

A "shrinkage" case fits `mixed_formula` (lmer, or glmer when `family` is given) with engine_b,
then `formula` (a `~ 0 + factor(g)` bayesglm) with engine_a with the prior at the mixed fit's
estimates, and compares the group coefficients with fixef + ranef (bayesglm_spec §12).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

import mixbridge
from mixbridge.checks import check_flag
from mixbridge.conformance.compare import compare
from mixbridge.conformance.rows import FAIL, Comparison

MODELS = ("lmer", "glmer", "bayesglm", "shrinkage")
_CASE_KEYS = {"name", "model", "formula", "data", "engine_a", "engine_b", "tolerance", "slow",
              "mixed_formula", "description", "options_a", "options_b"}  # fmt: skip


@dataclass
class Case:
    name: str
    model: str
    formula: str
    data: str
    options: dict[str, Any] = field(default_factory=dict)
    engine_a: str = "python"
    engine_b: str = "r"
    tolerance: str | None = None
    slow: bool = False
    mixed_formula: str = ""
    description: str = ""
    base_dir: Path | None = None
    options_a: dict[str, Any] = field(default_factory=dict)  # per-engine overrides of options
    options_b: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaseResult:
    case: Case
    comparison: Comparison | None
    error: str | None
    seconds: float
    fit_a: Any = None
    fit_b: Any = None
    data: pd.DataFrame | None = None
    truth: pd.Series | None = None  # simulated true group means, when known

    @property
    def status(self) -> str:
        if self.error is not None:
            return "ERROR"
        assert self.comparison is not None
        if not self.comparison.ok:
            return FAIL
        if any(r.status == "explained" for r in self.comparison.rows):
            return "explained"
        return "ok"

    @property
    def failed(self) -> bool:
        return self.status in (FAIL, "ERROR")


# ---------------------------------------------------------------------------------------------
# Loading


def builtin_path() -> Path:
    return Path(__file__).with_name("suites") / "builtin.toml"


def load_suite(spec: str | Path = "builtin") -> list[Case]:
    """Cases from "builtin" or a TOML file. Raises ValueError naming a bad case or key."""
    path = builtin_path() if str(spec) == "builtin" else Path(spec)
    if not path.is_file():
        raise ValueError(f"suite file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"suite file {path} is not valid TOML: {exc}") from exc
    entries = data.get("case", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"suite file {path}: cases must be [[case]] tables")
    cases = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        missing = [k for k in ("name", "model", "formula", "data") if k not in entry]
        if missing:
            raise ValueError(f"case #{i + 1} in {path} lacks {', '.join(missing)}")
        _check_case_types(entry, f"case #{i + 1} in {path}")
        if entry["model"] not in MODELS:
            raise ValueError(
                f"case {entry['name']!r}: model must be one of {', '.join(MODELS)}, "
                f"got {entry['model']!r}"
            )
        if entry["name"] in seen:
            raise ValueError(f"case name {entry['name']!r} appears twice in {path}")
        seen.add(entry["name"])
        if entry["model"] == "shrinkage" and "mixed_formula" not in entry:
            raise ValueError(f"shrinkage case {entry['name']!r} needs mixed_formula")
        cases.append(
            Case(
                name=entry["name"],
                model=entry["model"],
                formula=entry["formula"],
                data=entry["data"],
                options={k: v for k, v in entry.items() if k not in _CASE_KEYS},
                engine_a=entry.get("engine_a", "python"),
                engine_b=entry.get("engine_b", "r"),
                tolerance=entry.get("tolerance"),
                slow=_flag(entry, "slow", False),
                mixed_formula=entry.get("mixed_formula", ""),
                description=entry.get("description", ""),
                base_dir=path.parent,
                options_a=dict(entry.get("options_a", {})),
                options_b=dict(entry.get("options_b", {})),
            )
        )
    if not cases:
        raise ValueError(f"suite file {path} defines no [[case]]")
    return cases


def _flag(entry: dict[str, Any], key: str, default: bool) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"case {entry.get('name')!r}: {key} must be true or false, got {value!r}")
    return value


_STRING_KEYS = ("name", "model", "formula", "data", "engine_a", "engine_b", "mixed_formula",
                "description")  # fmt: skip


def _check_case_types(entry: dict[str, Any], where: str) -> None:
    """ValueError naming the case and key whose value has the wrong TOML type."""
    label = f"case {entry['name']!r}" if isinstance(entry.get("name"), str) else where

    def bad(key: str, expected: str) -> ValueError:
        return ValueError(f"{label}: {key} must be {expected}, got {entry[key]!r}")

    for key in _STRING_KEYS:
        if key in entry and not isinstance(entry[key], str):
            raise bad(key, "a string")
    if "slow" in entry and not isinstance(entry["slow"], bool):
        raise bad("slow", "true or false")
    for key in ("options_a", "options_b"):
        if key in entry and not isinstance(entry[key], dict):
            raise bad(key, "a table, e.g. { reml = false }")
    if "tolerance" in entry:
        from mixbridge.conformance.tolerance import POLICIES

        if not isinstance(entry["tolerance"], str) or entry["tolerance"] not in POLICIES:
            raise bad("tolerance", f"one of {', '.join(sorted(POLICIES))}")
    spec = entry["data"]
    if spec.startswith("sim:"):
        name, _, seed = spec[4:].partition(":")
        if name not in SIMULATORS:
            raise ValueError(
                f"{label}: unknown simulator {name!r} in data; known: {', '.join(SIMULATORS)}"
            )
        if seed and not seed.isdigit():
            raise ValueError(f"{label}: the seed in data = {spec!r} must be a whole number")


def read_data(path: str | Path) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame (`mixbridge.data_input.read_file`); object columns
    become categoricals (R factors)."""
    from mixbridge.data_input import read_file

    frame = read_file(path)
    for col in frame.columns:
        if frame[col].dtype == object:
            frame[col] = pd.Categorical(frame[col])
    return frame


def load_case_data(case: Case) -> tuple[pd.DataFrame, pd.Series | None]:
    """The case's data (and the true group means for simulated data)."""
    spec = case.data
    if spec.startswith("r:"):
        from mixbridge.bridge.datasets import load_r_dataset

        package, _, name = spec[2:].partition("/")
        return load_r_dataset(name, package=package), None
    if spec.startswith("sim:"):
        name, _, arg = spec[4:].partition(":")
        if name not in SIMULATORS:
            raise ValueError(f"case {case.name!r}: unknown simulator {name!r}")
        return SIMULATORS[name](int(arg) if arg else 1)
    path = Path(spec)
    if not path.is_absolute() and case.base_dir is not None:
        path = case.base_dir / path
    return read_data(path), None


# ---------------------------------------------------------------------------------------------
# Simulated data (deterministic given the seed)


def _twelve_groups(seed: int) -> tuple[pd.DataFrame, pd.Series]:
    from mixbridge.demo import twelve_group_data

    return twelve_group_data(seed)


def _binomial_groups(seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """12 groups, 100 trials (x6) and 2 trials (x6), group log-odds -0.4 + N(0, 0.5^2)."""
    rng = np.random.default_rng(seed)
    labels = [f"g{j:02d}" for j in range(1, 13)]
    eta = pd.Series(-0.4 + rng.normal(0.0, 0.5, 12), index=labels)
    n = np.array([100] * 6 + [2] * 6)
    s = rng.binomial(n, 1 / (1 + np.exp(-eta.to_numpy())))
    data = pd.DataFrame(
        {"s": s, "f": n - s, "g": pd.Categorical(labels, categories=labels)},
    )
    return data, eta


def _unbalanced_slopes(seed: int) -> tuple[pd.DataFrame, pd.Series | None]:
    """30 groups of sizes 1-40, random intercept and slope, one covariate."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 41, size=30)
    g = np.repeat([f"s{j:02d}" for j in range(30)], sizes)
    x = rng.uniform(0, 10, len(g))
    b0 = rng.normal(0, 2.0, 30)[np.repeat(np.arange(30), sizes)]
    b1 = rng.normal(0, 0.5, 30)[np.repeat(np.arange(30), sizes)]
    y = 5 + 0.8 * x + b0 + b1 * x + rng.normal(0, 1.5, len(g))
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g)}), None


def _poisson_groups(seed: int) -> tuple[pd.DataFrame, pd.Series | None]:
    """20 groups of 15, log-rate 1 + 0.3 x + N(0, 0.6^2)."""
    rng = np.random.default_rng(seed)
    g = np.repeat([f"p{j:02d}" for j in range(20)], 15)
    x = rng.normal(size=len(g))
    b = rng.normal(0, 0.6, 20)[np.repeat(np.arange(20), 15)]
    y = rng.poisson(np.exp(1 + 0.3 * x + b))
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g)}), None


SIMULATORS = {
    "twelve_groups": _twelve_groups,
    "binomial_groups": _binomial_groups,
    "unbalanced_slopes": _unbalanced_slopes,
    "poisson_groups": _poisson_groups,
}


# ---------------------------------------------------------------------------------------------
# Fitting and running


def parse_engine(spec: str) -> tuple[str, dict[str, str]]:
    """ "r:subprocess" -> ("r", {"transport": "subprocess"}); "python" -> ("python", {})."""
    name, _, transport = str(spec).partition(":")
    return name, ({"transport": transport} if transport else {})


def fit_model(
    model: str, formula: str, data: pd.DataFrame, engine: str, options: dict[str, Any]
) -> Any:
    """One fit through the public API, with `engine` possibly transport-qualified."""
    name, extra = parse_engine(engine)
    opts = dict(options)
    if model == "lmer":
        opts.pop("family", None)
        return mixbridge.lmer(formula, data, engine=name, **extra, **opts)
    if model == "glmer":
        opts.pop("reml", None)
        return mixbridge.glmer(formula, data, engine=name, **extra, **opts)
    if model == "bayesglm":
        return mixbridge.bayesglm(formula, data, engine=name, **extra, **opts)
    raise ValueError(f"unknown model {model!r}")


def run_case(case: Case) -> CaseResult:
    """Fit the case with both engines and compare; errors are captured, never raised."""
    start = time.perf_counter()
    data = truth = None
    try:
        data, truth = load_case_data(case)
        if case.model == "shrinkage":
            fit_a, fit_b = _shrinkage_fits(case, data)
        else:
            opts_a = {**case.options, **case.options_a}
            opts_b = {**case.options, **case.options_b}
            fit_a = fit_model(case.model, case.formula, data, case.engine_a, opts_a)
            fit_b = fit_model(case.model, case.formula, data, case.engine_b, opts_b)
        cmp = compare(fit_a, fit_b, tolerance=case.tolerance)
        cmp.a, cmp.b = case.engine_a, case.engine_b
        return CaseResult(case, cmp, None, time.perf_counter() - start, fit_a, fit_b, data, truth)
    except Exception as exc:  # one broken case must not stop the suite
        return CaseResult(
            case, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - start, None, None,
            data, truth,
        )  # fmt: skip


def _shrinkage_fits(case: Case, data: pd.DataFrame) -> tuple[Any, Any]:
    opts = dict(case.options)
    family = opts.pop("family", None)
    fix_dispersion = check_flag(opts.pop("fix_dispersion", False), "fix_dispersion")
    reml = check_flag(opts.pop("reml", True), "reml")
    if family in (None, "gaussian"):
        mixed = fit_model("lmer", case.mixed_formula, data, case.engine_b, {"reml": reml})
    else:
        mixed = fit_model("glmer", case.mixed_formula, data, case.engine_b, {"family": family})
    factor = next(iter(mixed.ranef))
    vc = mixed.varcorr
    prior = dict(
        family=family or "gaussian",
        prior_mean=float(mixed.fixef["(Intercept)"]),
        prior_scale=float(vc.loc[vc["grp"] == factor, "sdcor"].iloc[0]),
        prior_df=math.inf,
        scaled=False,
        **opts,
    )
    if fix_dispersion:
        prior["dispersion"] = float(mixed.sigma) ** 2
    bayes = fit_model("bayesglm", case.formula, data, case.engine_a, prior)
    return bayes, mixed


def run_suite(
    cases: list[Case], progress: Any = None, include_slow: bool = False
) -> list[CaseResult]:
    """Run every case in order; `progress(i, n, case, result_or_None)` is called around each."""
    todo = [c for c in cases if include_slow or not c.slow]
    results = []
    for i, case in enumerate(todo, 1):
        if progress:
            progress(i, len(todo), case, None)
        res = run_case(case)
        results.append(res)
        if progress:
            progress(i, len(todo), case, res)
    return results


def summary_frame(results: list[CaseResult]) -> pd.DataFrame:
    """One line per case: status, the worst row (largest relative difference), timing."""
    rows = []
    for r in results:
        worst_q, worst_rel, explained = "", math.nan, []
        if r.comparison is not None:
            cands = [row for row in r.comparison.rows if np.isfinite(row.max_rel)]
            bad = [row for row in r.comparison.rows if row.status == FAIL]
            pick = bad[0] if bad else (max(cands, key=lambda x: x.max_rel) if cands else None)
            if pick is not None:
                worst_q, worst_rel = pick.quantity, pick.max_rel
            explained = [row.quantity for row in r.comparison.rows if row.status == "explained"]
        rows.append(
            {
                "case": r.case.name,
                "model": r.case.model,
                "engines": f"{r.case.engine_a} vs {r.case.engine_b}",
                "status": r.status,
                "worst": worst_q,
                "max_rel": worst_rel,
                "explained": ",".join(explained),
                "seconds": round(r.seconds, 2),
                "error": r.error or "",
            }
        )
    return pd.DataFrame(rows)
