"""Deferred result fields: computed when first read, exactly equal to the eager values.

The mechanism (mixbridge.results: Deferred, DeferredField) without R, then the R engine's
embedded fits, whose cond_var, fitted and residuals stay in R until read, against the subprocess
transport's, which computes every field at once.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fit_equality import assert_same_fit, same

import mixbridge
from mixbridge.errors import ArgumentError
from mixbridge.results import Deferred, DeferredField, MixedFit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n, groups = 600, 30
    g = rng.integers(0, groups, n)
    x = rng.normal(size=n)
    b = rng.normal(0, 0.7, (groups, 2))
    y = 1 + 0.4 * x + b[g, 0] + b[g, 1] * x + rng.normal(size=n)
    k = (rng.uniform(size=n) < 1 / (1 + np.exp(-(x + b[g, 0])))).astype(int)
    return pd.DataFrame({"y": y, "x": x, "k": k, "g": pd.Categorical(g)})


@pytest.fixture(scope="module")
def python_fit(data) -> MixedFit:
    return mixbridge.lmer("y ~ x + (x | g)", data)


# ---------------------------------------------------------------------------------------------
# The mechanism


def _deferring(fit: MixedFit, calls: list[str], delay: float = 0.0) -> MixedFit:
    """A copy of `fit` whose cond_var and fitted are Deferreds counting their fetches."""
    new = copy.copy(fit)

    def fetcher(name: str, value):
        def fetch():
            calls.append(name)
            time.sleep(delay)
            return value

        return Deferred(fetch, source=f"test {name}")

    new.cond_var = fetcher("cond_var", fit.cond_var)
    new.fitted = fetcher("fitted", fit.fitted)
    return new


def test_deferred_field_fetches_once_and_stores_the_value(python_fit):
    calls: list[str] = []
    fit = _deferring(python_fit, calls)
    assert fit.deferred_fields() == ("cond_var", "fitted")
    assert "<deferred: test cond_var>" in repr(fit)  # repr does not fetch
    assert calls == []
    first = fit.cond_var
    assert first is fit.cond_var and calls == ["cond_var"]
    assert fit.deferred_fields() == ("fitted",)
    fit.fetch_deferred()
    assert calls == ["cond_var", "fitted"] and fit.deferred_fields() == ()
    assert_same_fit(fit, python_fit)


def test_deferred_fields_stay_required_in_the_constructor(python_fit):
    names = [f.name for f in dataclasses.fields(MixedFit)]
    assert {"ranef", "cond_var", "fitted", "residuals"} <= set(names)
    kwargs = {f.name: getattr(python_fit, f.name) for f in dataclasses.fields(MixedFit)}
    kwargs.pop("fitted")
    with pytest.raises(TypeError, match="fitted"):
        MixedFit(**kwargs)
    for name in ("ranef", "cond_var", "fitted", "residuals"):
        assert isinstance(MixedFit.__dict__[name], DeferredField)


def test_threads_share_one_fetch(python_fit):
    calls: list[str] = []
    fit = _deferring(python_fit, calls, delay=0.2)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(fit.cond_var)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["cond_var"]
    assert len({id(v) for v in got}) == 1 and got[0] is python_fit.cond_var


def test_a_failed_fetch_is_tried_again(python_fit):
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("session busy")
        return python_fit.fitted

    fit = copy.copy(python_fit)
    fit.fitted = Deferred(flaky)
    with pytest.raises(RuntimeError, match="session busy"):
        fit.fitted  # noqa: B018 - the read is the test
    assert fit.deferred_fields() == ("fitted",)
    np.testing.assert_array_equal(fit.fitted, python_fit.fitted)
    assert len(attempts) == 2


def test_copies_and_pickles_carry_the_values(python_fit):
    calls: list[str] = []
    fit = _deferring(python_fit, calls)
    shallow = copy.copy(fit)
    assert shallow.deferred_fields() == ("cond_var", "fitted")
    shallow.cond_var  # noqa: B018 - the read fetches, for both copies
    assert fit.cond_var is shallow.cond_var and calls == ["cond_var"]
    deep = copy.deepcopy(fit)
    assert deep.deferred_fields() == () and calls == ["cond_var", "fitted"]
    assert_same_fit(deep, python_fit)
    np.testing.assert_array_equal(deep.predict(), python_fit.predict())  # functions kept

    fresh = _deferring(python_fit, calls := [])
    back = pickle.loads(pickle.dumps(fresh))
    assert back.deferred_fields() == () and sorted(calls) == ["cond_var", "fitted"]
    assert_same_fit(back, python_fit)
    with pytest.raises(NotImplementedError, match="unpickled fit"):
        back.predict()


def test_fetch_deferred_names_unknown_fields(python_fit):
    with pytest.raises(ArgumentError, match="no deferred field 'sigma'"):
        python_fit.fetch_deferred("sigma")


# ---------------------------------------------------------------------------------------------
# The R engine: embedded fits defer, subprocess fits do not; the values are the same


@pytest.fixture(scope="module")
def r_fits(data, needs_r):
    """(embedded fits made fresh per test by `make`, subprocess fits: eager)."""
    sub = {
        "lmer": mixbridge.lmer("y ~ x + (x | g)", data, engine="r", transport="subprocess"),
        "glmer": mixbridge.glmer("k ~ x + (1 | g)", data, engine="r", transport="subprocess"),
    }

    def make(model: str) -> MixedFit:
        if model == "lmer":
            return mixbridge.lmer("y ~ x + (x | g)", data, engine="r", transport="embedded")
        return mixbridge.glmer("k ~ x + (1 | g)", data, engine="r", transport="embedded")

    return make, sub


@pytest.mark.parametrize("model", ["lmer", "glmer"])
def test_embedded_fits_fetch_from_r_what_subprocess_fits_carry(r_fits, model):
    make, sub = r_fits
    fit = make(model)
    assert fit.deferred_fields() == ("cond_var", "fitted", "residuals")
    assert sub[model].deferred_fields() == ()
    for name in ("fitted", "cond_var", "residuals"):
        assert same(getattr(fit, name), getattr(sub[model], name)), name
    assert fit.deferred_fields() == ()
    assert_same_fit(fit, sub[model], skip={"extra", "versions"})


def test_readers_see_the_values(r_fits):
    make, sub = r_fits
    eager = sub["lmer"]
    as_dict = make("lmer").to_dict(rows=True)
    expected = eager.to_dict(rows=True)
    for d in (as_dict, expected):
        d.pop("versions")
    assert as_dict == expected
    assert same(make("lmer").tidy(effects="ran_vals", conf_int=True),
                eager.tidy(effects="ran_vals", conf_int=True))  # fmt: skip
    cmp = mixbridge.compare(make("lmer"), eager)
    assert cmp.ok and all(r.max_abs == 0 for r in cmp.rows if np.isfinite(r.max_abs)), str(cmp)
    back = pickle.loads(pickle.dumps(make("lmer")))
    assert_same_fit(back, eager, skip={"extra", "versions"})
    fresh = make("lmer")
    fresh.to_r()  # the merMod rebuilt from the fit; the deferred fields still come from R
    assert same(fresh.cond_var, eager.cond_var)


def test_cond_var_false_is_empty_not_deferred(data, needs_r):
    fit = mixbridge.lmer("y ~ x + (1 | g)", data, engine="r", control={"cond_var": False})
    assert fit.cond_var == {} and fit.deferred_fields() == ("fitted", "residuals")


def test_threads_reading_deferred_fields_while_others_fit(r_fits, data):
    make, sub = r_fits
    fits = [make("lmer") for _ in range(3)]
    out: dict[str, list] = {"cond_var": [], "fit": [], "errors": []}

    def read(fit):
        try:
            out["cond_var"].append(fit.cond_var)
        except Exception as exc:  # pragma: no cover - reported below
            out["errors"].append(exc)

    def fit_more():
        try:
            out["fit"].append(mixbridge.lmer("y ~ x + (1 | g)", data, engine="r").fitted)
        except Exception as exc:  # pragma: no cover
            out["errors"].append(exc)

    threads = [threading.Thread(target=read, args=(f,)) for f in fits for _ in range(3)]
    threads += [threading.Thread(target=fit_more) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not out["errors"]
    assert len(out["cond_var"]) == 9 and all(same(v, sub["lmer"].cond_var) for v in out["cond_var"])
    assert all(same(v, out["fit"][0]) for v in out["fit"])


def test_after_the_r_session_ended(tmp_path, needs_r):
    """A field read before R ended has its value; one never read says why it cannot be had."""
    script = """
import numpy as np, pandas as pd, mixbridge
from rpy2.rinterface_lib import embedded as e
rng = np.random.default_rng(1)
d = pd.DataFrame({"y": rng.normal(size=200), "g": rng.integers(0, 10, 200)})
kept = mixbridge.lmer("y ~ 1 + (1 | g)", d, engine="r")
lost = mixbridge.lmer("y ~ 1 + (1 | g)", d, engine="r")
kept.fetch_deferred()
e.endr(0)
assert kept.cond_var["g"].shape == (10, 1, 1) and kept.fitted.shape == (200,)
try:
    lost.cond_var
except mixbridge.RNotAvailableError as exc:
    print("ERROR", exc)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "ERROR the embedded R session has ended" in out.stdout
    assert "fetch_deferred" in out.stdout
