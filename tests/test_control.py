"""control=: one set of keys, one meaning on every engine (mixbridge/control.py; issue 11 item 5).

The R engine's behaviour is checked live: the same settings must do the same thing in lme4 as
in the Python engine, and a key an engine cannot honour is an ArgumentError, never ignored.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge.errors import ArgumentError

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleepstudy(r_dataset):
    return r_dataset("sleepstudy")


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(10), 8)
    x = rng.normal(size=80)
    eta = 0.3 * x + rng.normal(0, 0.8, 10)[g]
    return pd.DataFrame(
        {
            "y": x + rng.normal(0, 1.0, 10)[g] + rng.normal(size=80),
            "yb": (rng.uniform(size=80) < 1 / (1 + np.exp(-eta))).astype(float),
            "x": x,
            "g": [f"g{k}" for k in g],
        }
    )


@pytest.mark.parametrize("transport", ["embedded", "subprocess"])
def test_start_and_maxeval_mean_the_same_on_both_engines(sleepstudy, transport):
    """README's `start` and `maxeval` were rejected by the R engine. With one evaluation allowed
    both optimizers stop at the start: θ is the start exactly, and the fit says it did not
    converge."""
    start = [0.5, 0.1, 0.2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fits = {
            "python": mixbridge.lmer(SLEEP, sleepstudy, control={"start": start, "maxeval": 1}),
            "r": mixbridge.lmer(
                SLEEP,
                sleepstudy,
                engine="r",
                transport=transport,
                control={"start": np.array(start), "maxeval": 1},
            ),  # fmt: skip
        }
    # the convergence warnings of both engines point at this call, not into mixbridge
    assert {type(w.message).__name__ for w in caught} == {"MixbridgeWarning", "RWarning"}
    assert {w.filename for w in caught} == {__file__}
    for engine, fit in fits.items():
        np.testing.assert_array_equal(fit.theta, start, err_msg=engine)
        assert not fit.converged, engine
        assert any(m.code == "convergence" for m in fit.messages), engine
    # without the limit, lme4 starts from `start` too and reaches its usual optimum
    r_fit = mixbridge.lmer(SLEEP, sleepstudy, engine="r", control={"start": start})
    r_default = mixbridge.lmer(SLEEP, sleepstudy, engine="r")
    assert r_fit.optimizer["feval"] != r_default.optimizer["feval"]  # another path ...
    assert r_fit.reml_criterion == pytest.approx(r_default.reml_criterion, abs=1e-6)  # same min


def test_maxfun_is_maxeval_on_every_engine(small):
    """lme4's bobyqa spelling `maxfun` was accepted by the R engine only."""
    for engine in ("python", "r"):
        with pytest.raises(ArgumentError, match="did you mean 'maxeval'") as info:
            mixbridge.lmer("y ~ x + (1 | g)", small, engine=engine, control={"maxfun": 10})
        assert info.value.argument == "maxfun"


@pytest.mark.parametrize("engine", ["python", "r"])
@pytest.mark.parametrize(
    "control, key, words",
    [
        ({"start": "0.5"}, "start", "vector of finite numbers"),
        ({"start": [0.5, np.nan]}, "start", "vector of finite numbers"),
        ({"start": [0.5, 0.1]}, "start", "must have length 1"),
        ({"maxeval": 2.5}, "maxeval", "integer >= 1"),
        ({"maxeval": True}, "maxeval", "integer >= 1"),
        ({"calc_derivs": "FALSE"}, "calc_derivs", "True or False"),
        ({"boundary_tol": -1.0}, "boundary_tol", ">= 0"),
        ({"tol_pwrss": 1e-9}, "tol_pwrss", "applies to glmer"),
        ({"tolPwrss": 1e-9}, "tolPwrss", "did you mean 'tol_pwrss', a glmer setting?"),
        ({1: 2}, "1", "unknown control key"),
    ],
)
def test_bad_control_is_an_argument_error_before_any_engine(small, engine, control, key, words):
    """`control={"start": "..."}` raised a raw ValueError (Python) or 'unknown key' (R)."""
    with pytest.raises(ArgumentError, match=re.escape(words)) as info:
        mixbridge.lmer("y ~ x + (1 | g)", small, engine=engine, control=control)
    assert info.value.argument == key


def test_control_must_be_a_mapping(small):
    with pytest.raises(ArgumentError, match="control must be a dict"):
        mixbridge.lmer("y ~ x + (1 | g)", small, control=[("maxeval", 3)])


@pytest.mark.parametrize(
    "model, engine, control",
    [
        ("lmer", "python", {"optimizer": "bobyqa"}),
        ("glmer", "python", {"maxeval": 100}),
        ("glmer", "python", {"nagq0_init_step": False}),
        ("glmer", "r", {"maxit": 50}),
        ("glmer", "r", {"restart_edge": True}),
    ],
)
def test_a_key_an_engine_cannot_honour_is_refused(small, model, engine, control):
    key = next(iter(control))
    call = mixbridge.lmer if model == "lmer" else mixbridge.glmer
    formula = "y ~ x + (1 | g)" if model == "lmer" else "yb ~ x + (1 | g)"
    with pytest.raises(ArgumentError, match=re.escape(f"control[{key!r}]")) as info:
        call(formula, small, engine=engine, control=control)
    assert info.value.argument == key


def test_cond_var_false_on_both_engines(needs_r, small):
    """cond_var=False empties fit.cond_var on every engine (the Python engine rejected it);
    the rest of the fit is unchanged (the scalar lmer path is not rerouted by it)."""
    for engine in ("python", "r"):
        full = mixbridge.lmer("y ~ x + (1 | g)", small, engine=engine)
        lean = mixbridge.lmer("y ~ x + (1 | g)", small, engine=engine, control={"cond_var": False})
        assert full.cond_var and lean.cond_var == {}, engine
        np.testing.assert_array_equal(lean.theta, full.theta)
        assert lean.optimizer == full.optimizer
        gl = mixbridge.glmer("yb ~ x + (1 | g)", small, engine=engine, control={"cond_var": False})
        assert gl.cond_var == {} and gl.ranef["g"].shape == (10, 1), engine


def test_every_key_is_documented_in_the_readme():
    from mixbridge.control import CONTROL_KEYS

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("Control settings") :]
    section = section[: section.index("\n## ")]
    for key in CONTROL_KEYS:
        assert f"`{key}`" in section, key


def test_check_control_normalizes_values():
    from mixbridge.control import check_control

    got = check_control(
        "glmer", {"optimizer": ["bobyqa", "Nelder_Mead"], "tol_pwrss": 1, "cond_var": np.False_},
        "r",
    )  # fmt: skip
    assert got == {"optimizer": ["bobyqa", "Nelder_Mead"], "tol_pwrss": 1.0, "cond_var": False}
    assert type(got["cond_var"]) is bool
    assert check_control("lmer", None, "python") == {}
    # a third-party engine gets its own settings untouched
    assert check_control("lmer", {"method": "lbfgs"}, "statsmodels") == {"method": "lbfgs"}
