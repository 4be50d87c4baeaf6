"""`mixbridge fit` from the shell (a subprocess, as another language's CI would call it) and the
JSON schema "mixbridge.fit/1" it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.serialize import BAYESGLM_KEYS, MIXED_KEYS

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mixbridge.cli", "fit", *args],
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip


def _strict_json(text: str) -> dict:
    """JSON as the standard has it: NaN/Infinity literals are an error."""

    def reject(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(11)
    g = np.repeat([f"s{j:02d}" for j in range(12)], 10)
    u = rng.normal(0, 1.2, 12)[np.repeat(np.arange(12), 10)]
    x = rng.uniform(0, 5, len(g))
    d = pd.DataFrame({
        "y": 1.5 + 0.4 * x + u + rng.normal(size=len(g)), "x": x,
        "g": pd.Categorical(g),
        "k": rng.binomial(1, 1 / (1 + np.exp(-(x - 2.5 + u)))),
        "w": rng.uniform(0.5, 2, len(g)),
    })  # fmt: skip
    out = tmp_path_factory.mktemp("fitcli")
    d.to_parquet(out / "d.parquet")
    d.to_csv(out / "d.csv", index=False)
    return {"parquet": out / "d.parquet", "csv": out / "d.csv", "frame": d}


def test_summary_from_parquet(files):
    out = _run("--model", "lmer", "--formula", "y ~ x + (1 | g)", "--data", str(files["parquet"]))
    assert out.returncode == 0, out.stderr
    assert "Linear mixed model fit by REML" in out.stdout
    fit = mixbridge.lmer("y ~ x + (1 | g)", files["frame"])
    assert f"REML criterion at convergence: {fit.reml_criterion:.4f}" in out.stdout


def test_json_schema_and_values(files):
    out = _run("--model", "lmer", "--formula", "y ~ x + (1 | g)", "--data", str(files["csv"]),
               "--ml", "--weights", "w", "--json", "--rows")  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = _strict_json(out.stdout)
    assert list(doc) == [*MIXED_KEYS, "fitted", "residuals"]
    assert doc["schema"] == "mixbridge.fit/1" and doc["kind"] == "mixed"
    fit = mixbridge.lmer("y ~ x + (1 | g)", files["frame"], reml=False, weights="w")
    assert doc["reml"] is False and doc["engine"] == "python" and doc["nobs"] == 120
    np.testing.assert_allclose(list(doc["fixef"].values()), fit.fixef, rtol=1e-12)
    assert list(doc["fixef"]) == ["(Intercept)", "x"]
    np.testing.assert_allclose(doc["vcov"]["values"], fit.vcov.to_numpy(), rtol=1e-12)
    assert doc["vcov"]["names"] == ["(Intercept)", "x"]
    assert doc["theta"] == pytest.approx(dict(zip(fit.theta_names, fit.theta, strict=True)))
    assert doc["loglik"] == pytest.approx(fit.loglik, rel=1e-12)
    assert doc["reml_criterion"] is None  # ML fit
    ranef = doc["ranef"]["g"]
    assert ranef["terms"] == ["(Intercept)"] and len(ranef["levels"]) == 12
    np.testing.assert_allclose(np.array(ranef["values"])[:, 0], fit.ranef["g"]["(Intercept)"],
                               rtol=1e-10)  # fmt: skip
    assert np.array(doc["cond_var"]["g"]).shape == (12, 1, 1)
    assert doc["varcorr"][-1] == {"grp": "Residual", "var1": None, "var2": None,
                                  "vcov": pytest.approx(fit.sigma**2),
                                  "sdcor": pytest.approx(fit.sigma)}  # fmt: skip
    assert len(doc["fitted"]) == len(doc["residuals"]) == 120


def test_glmer_and_bayesglm_json(files):
    out = _run("--model", "glmer", "--family", "binomial", "--formula", "k ~ x + (1 | g)",
               "--data", str(files["parquet"]), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = _strict_json(out.stdout)
    assert list(doc) == list(MIXED_KEYS) and doc["model"] == "glmer"
    assert doc["family"] == "binomial" and doc["link"] == "logit"
    out = _run("--model", "bayesglm", "--family", "binomial", "--formula", "k ~ x + g",
               "--data", str(files["parquet"]), "--prior-df", "inf", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = _strict_json(out.stdout)
    assert list(doc) == list(BAYESGLM_KEYS) and doc["kind"] == "bayesglm"
    fit = mixbridge.bayesglm("k ~ x + g", files["frame"], family="binomial", prior_df=np.inf)
    np.testing.assert_allclose(list(doc["coef"].values()), fit.coef, rtol=1e-12)
    # the intercept keeps its own prior (df 1); ±∞ travels as a string: JSON has no infinity
    assert doc["prior"]["df"][0] == 1.0 and doc["prior"]["df"][1] == "Inf"


def test_r_engine_from_the_shell(needs_r, files):
    out = _run("--model", "lmer", "--formula", "y ~ x + (1 | g)", "--data", str(files["csv"]),
               "--engine", "r", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = _strict_json(out.stdout)
    assert doc["engine"] == "r" and "lme4" in doc["versions"]
    ref = mixbridge.lmer("y ~ x + (1 | g)", files["frame"], engine="r")
    np.testing.assert_allclose(list(doc["fixef"].values()), ref.fixef, rtol=1e-12)
    np.testing.assert_allclose(doc["loglik"], ref.loglik, rtol=1e-12)


@pytest.mark.parametrize(
    "args, error, field",
    [
        (["--model", "lmer", "--formula", "y ~ z + (1 | g)"], "FormulaError", ("token", "z")),
        (["--model", "lmer", "--formula", "y ~ x + (1 | g)", "--engine", "nope"],
         "ArgumentError", ("argument", "engine")),
        (["--model", "lmer", "--formula", "y ~ x + (1 | g)", "--weights", "nope"],
         "DataError", ("column", "nope")),
    ],
)  # fmt: skip
def test_errors_are_json_documents_with_exit_status_2(files, args, error, field):
    out = _run(*args, "--data", str(files["csv"]), "--json")
    assert out.returncode == 2, out.stdout + out.stderr
    doc = _strict_json(out.stdout)
    assert doc["schema"] == "mixbridge.error/1" and doc["error"] == error
    assert doc[field[0]] == field[1]
    assert error in out.stderr and "Traceback" not in out.stderr


def test_missing_file_is_a_clear_error(tmp_path):
    out = _run("--model", "lmer", "--formula", "y ~ 1 + (1 | g)", "--data",
               str(tmp_path / "none.parquet"))  # fmt: skip
    assert out.returncode == 2
    assert "data file not found" in out.stderr and "Traceback" not in out.stderr


def test_to_dict_is_strict_json_for_boundary_fits():
    """A singular fit (θ = 0, correlation NaN) still gives standard JSON."""
    rng = np.random.default_rng(0)
    d = pd.DataFrame({"y": rng.normal(size=60), "x": rng.normal(size=60),
                      "g": np.repeat(list("abcdef"), 10)})  # fmt: skip
    fit = mixbridge.lmer("y ~ x + (x | g)", d)
    text = json.dumps(fit.to_dict(rows=True), allow_nan=False)
    assert _strict_json(text)["singular"] == fit.singular
