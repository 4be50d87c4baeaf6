"""The engine registry (mixbridge.engines): registration by object or module path, the kinds of
data each engine fits, and the conformance adapters registering themselves (engines.py itself
knows nothing of them)."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import mixbridge
from mixbridge import engines
from mixbridge.errors import ArgumentError


def _data(n: int = 120, groups: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    g = rng.integers(0, groups, n)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(0, 0.7, groups)[g] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def test_registry_knows_nothing_of_conformance():
    """The peers come from their own package's registrations, not from a table in engines.py."""
    source = inspect.getsource(engines)
    code = source.replace(engines.__doc__, "")  # the docstring may say who registers what
    assert "conformance" not in code and "statsmodels" not in code


def test_plain_import_registers_the_peers_lazily():
    """`import mixbridge` alone makes engine="statsmodels"/"glmm"/"mixedlm" available, without
    importing any peer package or adapter module; the first use imports the adapter."""
    code = (
        "import sys, mixbridge, numpy as np, pandas as pd\n"
        "from mixbridge import engines\n"
        "names = engines.available()\n"
        "assert {'python', 'r', 'statsmodels', 'glmm', 'mixedlm'} <= set(names), names\n"
        "loaded = [m for m in sys.modules if m.startswith('mixbridge.conformance.adapters.')\n"
        "          or m.split('.')[0] in ('statsmodels', 'glmm', 'mixedlm')]\n"
        "assert not loaded, loaded\n"
        "rng = np.random.default_rng(1)\n"
        "g = rng.integers(0, 10, 100)\n"
        "d = pd.DataFrame({'y': rng.normal(size=100) + rng.normal(size=10)[g], 'g': g})\n"
        "fit = mixbridge.lmer('y ~ 1 + (1 | g)', d, engine='statsmodels')\n"
        "assert fit.engine == 'statsmodels', fit.engine\n"
        "assert 'mixbridge.conformance.adapters.statsmodels_engine' in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.fixture
def probe_name():
    """An engine name registered by the test and removed afterwards."""
    yield "probe"
    engines.unregister("probe")
    assert "probe" not in engines.available()


def test_register_by_object_and_by_module_path(monkeypatch, probe_name):
    calls = []

    def lmer(formula, data, **kw):
        calls.append((formula, kw["reml"]))
        return mixbridge.lmer(formula, data, reml=kw["reml"])

    engines.register("probe", types.SimpleNamespace(lmer=lmer))
    fit = mixbridge.lmer("y ~ x + (1 | g)", _data(), engine="probe", reml=False)
    assert calls == [("y ~ x + (1 | g)", False)] and fit.call.reml is False
    module = types.ModuleType("mixbridge_probe_engine")
    module.lmer = lmer
    monkeypatch.setitem(sys.modules, "mixbridge_probe_engine", module)
    engines.register("probe", "mixbridge_probe_engine")
    mixbridge.lmer("y ~ x + (1 | g)", _data(), engine="probe")
    assert len(calls) == 2
    with pytest.raises(ArgumentError, match="data kinds"):
        engines.register("probe", module, data=("spark",))


def test_dask_data_goes_to_engines_registered_for_it(probe_name):
    """api.lmer validates a Dask frame, then hands it (not a computed copy) to an engine that
    the registry says fits Dask data; other engines are refused by name."""
    seen = []

    def lmer(formula, data, **kw):
        seen.append(data)
        return mixbridge.lmer(formula, data.compute(), reml=kw["reml"])

    ddf = dd.from_pandas(_data(), npartitions=2)
    engines.register("probe", types.SimpleNamespace(lmer=lmer), data=("pandas", "dask"))
    assert engines.accepts("probe", "dask") and engines.accepts("python", "dask")
    assert not engines.accepts("r", "dask") and not engines.accepts("statsmodels", "dask")
    fit = mixbridge.lmer("y ~ x + (1 | g)", ddf, engine="probe")
    assert seen == [ddf] and fit.call.data is ddf
    # the input checks run first: a bad formula never reaches the engine
    with pytest.raises(mixbridge.FormulaError):
        mixbridge.lmer("y ~ nosuch + (1 | g)", ddf, engine="probe")
    with pytest.raises(ArgumentError, match="weights= must be a column name"):
        mixbridge.lmer("y ~ x + (1 | g)", ddf, engine="probe", weights=np.ones(120))
    assert len(seen) == 1
    engines.register("probe", types.SimpleNamespace(lmer=lmer))  # pandas only
    with pytest.raises(ArgumentError, match="cannot fit a Dask DataFrame") as info:
        mixbridge.lmer("y ~ x + (1 | g)", ddf, engine="probe")
    assert info.value.argument == "engine" and "'python'" in str(info.value)
