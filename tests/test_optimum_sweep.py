"""Never a worse optimum than lme4 (issue 11): a deterministic sweep of random designs for every
random-effects structure, against lme4 run live.

For each design: the Python engine's θ (glmer: θ and β) must be at least as good as lme4's,
judged by lme4's own deviance function (the R fit's `objective`, lme4's devFunOnly closure,
the function behind `mixbridge.lmer_objective(..., engine="r")`) at both engines' estimates:

    lme4_dev(ours) <= lme4_dev(lme4's) + 1e-8 * |lme4_dev(lme4's)|,

or else the Python fit says converged=False with a convergence warning in `messages` (and it
does not say so at lme4's optimum when lme4 converged: no false alarms). 1e-8
relative is far above the criterion's rounding (~1e-13 relative) and far below any optimizer
miss worth reporting (issue 11 saw misses of 1e-4 to 5e-2 relative).

glmer is fitted and judged with control={"tol_pwrss": 1e-14} on both engines: at lme4's default
PIRLS tolerance (1e-7) the deviance function stops PIRLS early and its value depends on the
linear predictor it starts from (each engine's own stage-1 optimum), by up to ~1e-3 (spec
§3.2), which would swamp a 1e-8 comparison. Even at 1e-12 both engines' functions still jump by
2.5e-5 (2e-8 relative) where PIRLS needs one more iteration (a Poisson crossed design of this
sweep: the jump sits at different points for the two engines, so the same (θ, β) differed by
2.5e-5); at 1e-14 they agree to ~1e-12 along the same line, one smooth function of (θ, β).

Designs (tests/designs.py `sweep_design`): 20 groups × 10 rows (unbalanced sizes for every
third seed), half of them boundary designs (true slope variance 0, or the last term's variance
0 without slopes); lmer alternates REML and ML, glmer binomial and poisson (in pairs of seeds,
so each family gets boundary and interior designs). The number of designs per structure is
SWEEP_DESIGNS (30) for lmer in the default "ci" hypothesis profile and THOROUGH_DESIGNS (200)
under HYPOTHESIS_PROFILE=thorough. glmer costs more: the Python glmer runs Nelder–Mead over
(θ, β), ~0.5-1.4 s of CPU a design with scalar-valued terms but 4-10 s with vector-valued ones
((x | g), three terms); 30 designs of those would add ~6 min to the suite, so the default suite
runs GLMER_VECTOR_SEEDS of them (one a design that failed before) and the thorough profile the
full sweep. A failure lists every design that failed, with what is needed to rebuild it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from designs import GAP_REL, SWEEP_STRUCTURES, flagged, sweep_design

import mixbridge
from mixbridge.testing.strategies import profile_name

SWEEP_DESIGNS = 30
THOROUGH_DESIGNS = 200
TIGHT_PIRLS = {"tol_pwrss": 1e-14}  # see the module docstring
GLMER_DESIGNS = SWEEP_DESIGNS  # scalar-valued terms only (see GLMER_VECTOR_SEEDS)
# glmer with vector-valued terms: the default suite's seeds (corr_slope seed 5: stage 2 stopped
# at θ = [0, 0.53, 0.15], 0.83 above lme4's [0.38, -0.19, 0.44], and said converged; the better
# basin is across the bound θ_0 = 0, with the correlation's sign flipped). Seed 1 (binomial,
# interior: the kind of seed 5) is left out; test_properties_glm.py draws more designs.
GLMER_VECTOR_SEEDS = {"corr_slope": (0, 2, 5), "three_terms": (0, 1)}


def sweep_seeds(model: str, structure: str) -> list[int]:
    if profile_name() == "thorough":
        return list(range(THOROUGH_DESIGNS))
    if model == "lmer":
        return list(range(SWEEP_DESIGNS))
    return list(GLMER_VECTOR_SEEDS.get(structure, range(GLMER_DESIGNS)))


def _judge(structure: str, seed: int, label: str, py, r, ours: float, theirs: float) -> str | None:
    gap = ours - theirs
    if gap <= GAP_REL * abs(theirs):
        if py.converged or not r.converged:
            return None
        # at lme4's optimum, lme4 converged, ours says it may not be: a false alarm
        texts = [m.text for m in py.messages if m.kind == "warning"]
        return f"{structure} seed={seed} {label}: at the optimum but converged=False: {texts}"
    if flagged(py):
        return None
    return (
        f"{structure} seed={seed} {label}: lme4's deviance at ours {ours:.10g} vs at lme4's "
        f"{theirs:.10g} (gap {gap:.3g}, {gap / abs(theirs):.2g} rel); θ ours "
        f"{np.round(py.theta, 6).tolist()}, converged={py.converged}"
    )


@pytest.mark.parametrize("structure", list(SWEEP_STRUCTURES))
def test_lmer_never_worse_than_lme4(needs_r, structure):
    failures = []
    for seed in sweep_seeds("lmer", structure):
        data, formula, _ = sweep_design(structure, seed)
        reml = seed % 4 < 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # singular fits and the like: judged below
            py = mixbridge.lmer(formula, data, reml=reml)
            r = mixbridge.lmer(formula, data, reml=reml, engine="r")
        theirs, ours = r.objective(r.theta), r.objective(py.theta)
        label = f"{formula} REML={reml}"
        failure = _judge(structure, seed, label, py, r, ours, theirs)
        if failure:
            failures.append(failure)
        # fit.optimizer describes the returned θ
        assert py.optimizer["fval"] == py.criterion, label
    assert not failures, f"{len(failures)} design(s) worse than lme4:\n" + "\n".join(failures)


@pytest.mark.parametrize("structure", list(SWEEP_STRUCTURES))
def test_glmer_never_worse_than_lme4(needs_r, structure):
    failures = []
    for seed in sweep_seeds("glmer", structure):
        family = ("binomial", "poisson")[(seed // 2) % 2]
        data, formula, _ = sweep_design(structure, seed, family)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            py = mixbridge.glmer(formula, data, family=family, control=TIGHT_PIRLS)
            r = mixbridge.glmer(formula, data, family=family, control=TIGHT_PIRLS, engine="r")
        theirs = r.objective(r.theta, r.fixef.to_numpy())
        ours = r.objective(py.theta, py.fixef.to_numpy())
        failure = _judge(structure, seed, f"{formula} {family}", py, r, ours, theirs)
        if failure:
            failures.append(failure)
    assert not failures, f"{len(failures)} design(s) worse than lme4:\n" + "\n".join(failures)
