"""The predictor-guided loop (LINAS / CiMNet).

A seeded initial population is evaluated truly; each round refits one predictor per objective
(and one for constraint violation) on every true evaluation so far, runs pymoo's NSGA-II on the
predictors only, and truly evaluates the best predicted candidates not evaluated before. The
hypervolume of the true front is recorded per round. Every round is a function of the rows of
the rounds before it (sorted by config hash, so completion order does not matter), so a rerun
replays the same rounds and reads finished evaluations from the study instead of recomputing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .evaluate import Metrics
from .executor import EvaluationFailed, run_all
from .objectives import Constraints, Objective, minimised
from .predictors import Predictor, hierarchy_blocks, rank_metrics
from .space import Space
from .study import Row, Study, config_hash


@dataclass(frozen=True)
class Settings:
    objectives: tuple[Objective, ...]
    budget: int
    population: int
    seed: int = 0
    constraints: Constraints = field(default_factory=Constraints)
    inner_evals: int = 2000  # NSGA-II evaluations on the predictors per round (DyNAS-T: 5,000+;
    # fewer here keeps a round at a few seconds beside evaluations of a fraction of a second)
    initial: tuple[dict[str, Any], ...] = ()
    """Configs evaluated in the first round before the random ones: the baseline (the preset
    and, for a family, its largest subnet), so the front is never worse than it and the
    predictors see it; NSGA-II's mutations then start from a known good point."""
    block_rate: float = 0.5
    """In a space of several blocks (an architecture and a hierarchy, ``Space.blocks``): the
    share of NSGA-II's offspring that differ from their parent in one block only, of its initial
    population and of the first round's random configs that are a known good config (the
    evaluated front; the initial configs) with one block redrawn. CiMNet's space is hierarchical:
    a network that scores well should be tried on other hierarchies as it is. Without this a
    mutation of the 31-variable CiMNet config almost always changed one of the 23 architecture
    variables, and crossover mixes both blocks, so "the largest subnet on another hierarchy"
    was almost never proposed (benchmarks/cimnet.py). With one block nothing changes."""
    hardware_rate: float = 0.5
    """In a space of several blocks: the share of each round's batch that runs the true front's
    networks (their graph-only objectives known) on the hierarchies the predictors rate best;
    the rest is NSGA-II's best on the predictors, where new networks come from. From the second
    proposing round on the share is lowered where the hierarchy adds less to the true front than
    new networks do (``_hardware_share``)."""


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Rows not dominated by any other row (all objectives minimised)."""
    points = np.asarray(points, float)
    keep = np.ones(len(points), bool)
    for i, p in enumerate(points):
        dominated = np.all(points <= p, axis=1) & np.any(points < p, axis=1)
        keep[i] = not dominated.any()
    return keep


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """pymoo's HV of the points (minimised) that lie below the reference point."""
    from pymoo.indicators.hv import HV

    points = np.asarray(points, float).reshape(-1, len(reference))
    inside = points[np.all(points < reference, axis=1)]
    return float(HV(ref_point=np.asarray(reference, float))(inside)) if len(inside) else 0.0


def feasible_points(rows: list[Row], settings: Settings) -> np.ndarray:
    ok = [r for r in rows if settings.constraints.violation(r.metrics) == 0]
    return np.array([minimised(r.metrics, list(settings.objectives)) for r in ok]).reshape(
        -1, len(settings.objectives)
    )


def reference_point(points: np.ndarray) -> np.ndarray:
    """10% beyond the worst feasible value of each objective (fixed from the first round)."""
    hi, lo = points.max(axis=0), points.min(axis=0)
    span = np.where(hi > lo, hi - lo, np.maximum(np.abs(hi), 1e-12))
    return hi + 0.1 * span


def run_loop(
    space: Space,
    evaluate: Callable[[dict[str, Any]], Any],
    study: Study,
    settings: Settings,
    executor: Executor | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Run (or resume) the search until ``settings.budget`` true evaluations are stored, or
    the space has no config left that was not evaluated."""
    stored = {r.hash: r for r in study.rows()}
    recorded = {info["round"]: info for info in study.rounds()}
    number = 0
    while True:
        earlier = sorted((r for r in stored.values() if r.round < number), key=lambda r: r.hash)
        remaining = settings.budget - len(earlier)
        if remaining <= 0:
            break
        n = min(settings.population, remaining)
        rng = np.random.default_rng([settings.seed, number])
        start = time.perf_counter()
        if number == 0:
            configs = _first_round(space, settings.initial, rng, n, settings.block_rate)
            predicted, proposal = [None] * len(configs), {}
        else:
            configs, predicted, proposal = _propose(space, earlier, settings, rng, n)
        if not configs:  # every distinct config of the space is evaluated: nothing is left
            break
        todo = [(c, p) for c, p in zip(configs, predicted) if config_hash(c) not in stored]
        for (config, pred), metrics in run_all(executor, _Job(evaluate), todo):
            if isinstance(metrics, EvaluationFailed):  # stored, so a rerun does not repeat it
                metrics = Metrics(error=f"failed: {metrics}", seconds=metrics.seconds)
            row = Row(config_hash(config), number, config, metrics.to_dict(), pred, metrics.seconds)
            study.add(row)
            stored[row.hash] = row
        if todo or number not in recorded:  # a resumed round keeps what it recorded when it ran
            batch = [stored[config_hash(c)] for c in configs if config_hash(c) in stored]
            info = _round_info(study, number, list(stored.values()), batch, settings, proposal)
            info["wall_s"] = time.perf_counter() - start
            study.set_round(number, info)
        else:
            info = recorded[number]
        if progress is not None:
            progress(info)
        number += 1


class _Job:
    """Picklable ``(config, predicted) -> Metrics`` wrapper around the evaluator."""

    def __init__(self, evaluate: Callable[[dict[str, Any]], Any]):
        self.evaluate = evaluate

    def __call__(self, item: tuple[dict[str, Any], Any]) -> Any:
        return self.evaluate(item[0])


def _round_info(
    study: Study,
    number: int,
    rows: list[Row],
    batch: list[Row],
    settings: Settings,
    proposal: dict[str, Any],
) -> dict[str, Any]:
    points = feasible_points(rows, settings)
    meta = study.meta()
    if "hv_reference" not in meta and len(points):
        study.set_meta("hv_reference", reference_point(points).tolist())
        meta = study.meta()
    ref = np.array(meta["hv_reference"]) if "hv_reference" in meta else None
    held_out = {}
    for o in settings.objectives:  # predictions made before these rows were evaluated
        pairs = [
            (o.value(r.metrics), r.predicted[o.name])
            for r in batch
            if r.predicted and r.feasible and o.name in r.predicted
        ]
        if len(pairs) >= 2:
            true, pred = np.array(pairs).T
            held_out[o.name] = rank_metrics(true, pred)
    best = {}
    for o in settings.objectives:
        values = [o.value(r.metrics) for r in rows if r.feasible]
        if values:
            best[o.name] = max(values) if o.maximise else min(values)
    return {
        "round": number,
        "evaluations": len(rows),
        "feasible": int(len(points)),
        "hypervolume": hypervolume(points, ref) if ref is not None and len(points) else 0.0,
        "best": best,
        "predictors": {},
        **proposal,
        "held_out": held_out,
    }


def _first_round(
    space: Space,
    initial: tuple[dict[str, Any], ...],
    rng: np.random.Generator,
    n: int,
    block_rate: float = 0.0,
) -> list[dict]:
    """The initial configs (those with a value for every variable, at most ``n``), then random
    ones up to ``n``, a share ``block_rate`` of them the initial configs with one block redrawn
    (a space of several blocks only)."""
    given = [c for c in initial if all(c.get(v.name) is not None for v in space.variables)][:n]
    seen = {config_hash(c) for c in given}
    blocks = space.blocks()
    varied: list[dict] = []
    if len(blocks) > 1 and given:
        parents = np.array([space.to_indices(c) for c in given])
        draw = lambda m: block_variations(space, parents, blocks, rng, m)  # noqa: E731
        varied = _distinct(space, draw, round(block_rate * (n - len(given))), seen)
        seen |= {config_hash(c) for c in varied}
    return given + varied + _random_new(space, rng, n - len(given) - len(varied), seen)


def block_variations(
    space: Space,
    parents: np.ndarray,
    blocks: tuple[np.ndarray, ...],
    rng: np.random.Generator,
    n: int,
) -> np.ndarray:
    """``n`` rows of indices: the parents in turn, each with every block in turn redrawn at
    random and the other blocks kept (variation ``j`` redraws block ``j % len(blocks)``)."""
    rows = parents[(np.arange(n) // len(blocks)) % len(parents)].copy()
    fresh = space.sample(n, rng)
    for j in range(n):
        block = blocks[j % len(blocks)]
        rows[j, block] = fresh[j, block]
    return rows


def _random_new(space: Space, rng: np.random.Generator, n: int, seen: set[str]) -> list[dict]:
    """``n`` distinct random configs not in ``seen`` (fewer if the space runs out)."""
    return _distinct(space, lambda m: space.sample(m, rng), n, seen)


def _distinct(
    space: Space, draw: Callable[[int], np.ndarray], n: int, seen: set[str]
) -> list[dict]:
    """``n`` distinct configs from ``draw(n)`` (rows of indices, made canonical) not in
    ``seen`` (fewer if 100 draws do not find them)."""
    out: dict[str, dict] = {}
    for _ in range(100):
        for idx in space.canonical(draw(n)):
            config = space.from_indices(idx)
            h = config_hash(config)
            if h not in seen and h not in out and len(out) < n:
                out[h] = config
        if len(out) >= n:
            break
    return list(out.values())


def _propose(
    space: Space, rows: list[Row], settings: Settings, rng: np.random.Generator, n: int
) -> tuple[list[dict], list[dict | None], dict[str, Any]]:
    """The ``n`` best candidates on the predictors, not evaluated before: in a space of several
    blocks a share (``_hardware_share``) of them are networks of the true front on the
    hierarchies the predictors rate best (``_front_on_other_hardware``), the rest NSGA-II's
    best. An objective of the compressed graph alone (accuracy, fidelity, bits) is not predicted
    for a candidate whose graph was evaluated: the search uses the true value
    (``Objective.graph_only``). Also returns what the round records: the predictors chosen and
    the share."""
    seen = {_canonical_hash(space, r.config) for r in rows}
    objectives = list(settings.objectives)
    good = [r for r in rows if r.feasible]
    if len(good) < 3:
        return _random_new(space, rng, n, seen), [None] * n, {}
    enc = lambda rs, summed=False: space.features(  # noqa: E731
        np.array([space.to_indices(r.config) for r in rs]), summed
    )
    pairs = hierarchy_blocks(space)
    models = {
        o.name: Predictor(log=o.log, pairs=pairs).fit(
            enc(good, o.summed), [o.value(r.metrics) for r in good]
        )
        for o in objectives
    }
    violations = np.array([settings.constraints.violation(r.metrics) for r in rows])
    guard = Predictor().fit(enc(rows), violations) if violations.any() else None
    fitted = {k: {"model": m.chosen, "cv_neg_mape": m.cv_score} for k, m in models.items()}
    known = _known_graphs(space, good, objectives)

    encodings = {o.summed for o in objectives} | {False}  # the guard reads the plain one

    def predicted_only(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        feats = {summed: space.features(x, summed) for summed in encodings}
        f = np.stack(
            [
                (-1 if o.maximise else 1) * models[o.name].predict(feats[o.summed])
                for o in objectives
            ],
            axis=1,
        )
        return f, (guard.predict(feats[False]) - 0.5 if guard is not None else None)

    def predict(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        f, g = predicted_only(x)
        return known.fill(space.canonical(x), f), g

    true = feasible_points(rows, settings)
    fit = [r for r in rows if settings.constraints.violation(r.metrics) == 0]
    on_front = pareto_mask(true)
    front = [space.to_indices(r.config) for r, keep in zip(fit, on_front) if keep]
    front = np.array(front).reshape(-1, len(space.names))
    taken = set(seen)
    chosen: list[np.ndarray] = []
    several = len(space.blocks()) > 1
    graph_of = lambda r: _graph_key(space, known, r.config)  # noqa: E731
    share = _hardware_share(rows, settings, graph_of) if several else 0.0
    m = round(share * n)
    if len(front) and m:  # m = 0 draws nothing: the rng stays NSGA-II's, as in one block
        chosen += _front_on_other_hardware(space, front, true[on_front], predict, rng, m, taken)
    pop = _nsga2(space, predict, settings, rng, front)
    chosen += _best_new(space, pop, predict, n - len(chosen), taken)
    configs = [space.from_indices(x) for x in chosen]
    predicted: list[dict | None] = []
    if chosen:  # what the predictors alone expected (the rounds' held-out scores compare it)
        f, _ = predicted_only(np.array(chosen))
        predicted = [{o.name: float(abs(v)) for o, v in zip(objectives, row)} for row in f]
    if len(configs) < n:
        extra = _random_new(space, rng, n - len(configs), taken)
        configs += extra
        predicted += [None] * len(extra)
    recorded = {"predictors": fitted}
    return configs, predicted, recorded | ({"hardware_share": share} if several else {})


def _hardware_share(rows: list[Row], settings: Settings, graph_of: Callable[[Row], bytes]) -> float:
    """``hardware_rate``, lowered where known networks on new hierarchies (their compressed
    graph evaluated in an earlier round) have added less hypervolume to the true front per
    evaluation than new networks, over every proposing round so far: the rate times
    2 * hw / (hw + new), at most the rate. Where the hierarchy barely moves the cycles
    (vit-chars) the round goes to new networks. Measured, not predicted: the predictors' picks
    of a network's best hierarchy are optimistic (the cycles predicted for them were 0.8-0.9 of
    the true ones on vit-chars). Not raised above the rate: on mbv3-chars, where the hierarchy
    added more than new networks, 0.9 of a round on it lost the best front (benchmarks/cimnet.py
    fronts, README)."""
    rate = settings.hardware_rate
    points = feasible_points(rows, settings)
    if not rate or len(points) < 2:
        return rate
    reference = reference_point(points)
    graphs = {r.hash: graph_of(r) for r in rows}  # ``graph_of``: the row's compressed-graph key
    gain, count = np.zeros(2), np.zeros(2)
    for number in sorted({r.round for r in rows} - {0}):
        before = [r for r in rows if r.round < number]
        known = {graphs[r.hash] for r in before}
        base = feasible_points(before, settings)
        start = hypervolume(base, reference)
        batch = [r for r in rows if r.round == number]
        for kind in (0, 1):
            group = [r for r in batch if (graphs[r.hash] in known) == kind]
            if group:
                both = np.vstack([base, feasible_points(group, settings)])
                gain[kind] += hypervolume(both, reference) - start
                count[kind] += len(group)
    if not count.all() or not gain.any():
        return rate
    per = gain / count
    return float(min(rate, 2 * rate * per[1] / per.sum()))


@dataclass(frozen=True)
class _KnownGraphs:
    """The true values of the graph-only objectives (``columns``) per evaluated compressed
    graph (keyed by its values of the ``mask`` variables, ``Space.graph_mask``), to replace the
    predictions of any candidate that runs one of those graphs."""

    mask: np.ndarray
    columns: list[int]
    values: dict[bytes, np.ndarray]

    def key(self, indices: np.ndarray) -> bytes:
        return np.ascontiguousarray(indices[self.mask]).tobytes()

    def fill(self, x: np.ndarray, f: np.ndarray) -> np.ndarray:
        if not self.columns or not self.values:
            return f
        f = f.copy()
        for i, row in enumerate(x):
            value = self.values.get(self.key(row))
            if value is not None:
                f[i, self.columns] = value
        return f


def _known_graphs(space: Space, rows: list[Row], objectives: list[Objective]) -> _KnownGraphs:
    known = _KnownGraphs(
        space.graph_mask(), [j for j, o in enumerate(objectives) if o.graph_only], {}
    )
    for r in rows:
        known.values[_graph_key(space, known, r.config)] = minimised(r.metrics, objectives)[
            known.columns
        ]
    return known


def _graph_key(space: Space, known: _KnownGraphs, config: dict[str, Any]) -> bytes:
    """The key of the compressed graph ``config`` runs (its canonical form: one per network)."""
    return known.key(space.canonical(space.to_indices(config)))


def _front_on_other_hardware(
    space: Space,
    front: np.ndarray,
    points: np.ndarray,
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
    rng: np.random.Generator,
    n: int,
    taken: set[str],
) -> list[np.ndarray]:
    """``n`` new candidates that run the true front's graphs (rows ``front``, true objectives
    ``points``) on other hierarchies: each network's hierarchies ranked on the predictors
    (``_hierarchies``), taken in turn from the networks in NSGA-II's crowding order (the
    extremes first: the most accurate network and the cheapest one), so that a front of many
    networks does not spend the share on its crowded middle."""
    from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance

    hardware = ~space.graph_mask() & space.searched_mask()
    order = np.argsort(-calc_crowding_distance(points), kind="stable")
    ranked = [iter(_hierarchies(space, front[i], hardware, predict, rng)) for i in order]
    out: list[np.ndarray] = []
    while len(out) < n and ranked:
        for candidates in list(ranked):
            fresh = (_take(space, x, taken) for x in candidates)
            x = next((c for c in fresh if c is not None), None)
            if x is None:
                ranked.remove(candidates)
            elif len(out) < n:
                out.append(x)
    return out


def _hierarchies(
    space: Space,
    network: np.ndarray,
    hardware: np.ndarray,
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
    rng: np.random.Generator,
    draws: int = 512,
) -> np.ndarray:
    """``network`` (a row of indices) with its ``hardware`` variables redrawn, best first on
    the predictors: ``draws`` random hierarchies, then two steps of local search (every
    one-variable change of the best eight so far: the best hierarchy differs from a good random
    one in a variable or two)."""
    pool = np.repeat(network[None], draws, axis=0)
    pool[:, hardware] = space.sample(draws, rng)[:, hardware]
    for _ in range(2):
        f, g = predict(pool)
        best = pool[_rank(f, g)[:8]]
        steps = [pool]
        for j in np.flatnonzero(hardware):
            for c in range(len(space.variables[j].choices)):
                step = best.copy()
                step[:, j] = c
                steps.append(step)
        pool = np.unique(np.vstack(steps), axis=0)
    f, g = predict(pool)
    return pool[_rank(f, g)]


def _take(space: Space, x: np.ndarray, taken: set[str]) -> np.ndarray | None:
    """``x`` made canonical if its config is new (then it is added to ``taken``), else None."""
    x = space.canonical(x)
    h = config_hash(space.from_indices(x))
    if h in taken:
        return None
    taken.add(h)
    return x


def _canonical_hash(space: Space, config: dict[str, Any]) -> str:
    """The hash of the config the search would evaluate for ``config``."""
    return config_hash(space.from_indices(space.canonical(space.to_indices(config))))


def _best_new(
    space: Space,
    x: np.ndarray,
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
    n: int,
    taken: set[str],
) -> list[np.ndarray]:
    """The first ``n`` rows of ``x`` in ``_rank`` order whose configs are not in ``taken``
    (which grows by them)."""
    out: list[np.ndarray] = []
    if n <= 0 or not len(x):
        return out
    f, g = predict(x)
    for i in _rank(f, g):
        if (new := _take(space, x[i], taken)) is not None:
            out.append(new)
            if len(out) == n:
                break
    return out


def _rank(f: np.ndarray, g: np.ndarray | None) -> list[int]:
    """Feasible first, then by non-dominated front; order within a front is kept."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    feasible = np.ones(len(f), bool) if g is None else g <= 0
    order: list[int] = []
    for subset in (np.flatnonzero(feasible), np.flatnonzero(~feasible)):
        if len(subset):
            for front in NonDominatedSorting().do(f[subset]):
                order += subset[np.sort(front)].tolist()
    return order


def _nsga2(
    space: Space,
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
    settings: Settings,
    rng: np.random.Generator,
    front: np.ndarray,
) -> np.ndarray:
    """Final population of NSGA-II on the predictors (DyNAS-T's operators: integer sampling,
    SBX p=0.9 eta=15, polynomial mutation eta=20, rounding repair, no duplicates). Mutation
    touches every offspring (pymoo's default, 1/n_var per variable) rather than DyNAS-T's 2%:
    with 2% the population of a small space collapses into duplicates, and pymoo retries
    mating up to 100 times per generation to replace them (a minute per round). In a space of
    several blocks, a share ``block_rate`` of the initial population is the true ``front``
    (rows of indices) with one block redrawn, the rest random (``Settings.block_rate``)."""
    from pymoo.core.problem import Problem
    from pymoo.optimize import minimize

    highs = np.array([len(v.choices) - 1 for v in space.variables])
    constrained = predict(np.zeros((1, len(highs)), np.int64))[1] is not None

    class Predicted(Problem):
        def __init__(self):
            super().__init__(
                n_var=len(highs),
                n_obj=len(settings.objectives),
                n_ieq_constr=1 if constrained else 0,
                xl=0,
                xu=highs,
                vtype=int,
            )

        def _evaluate(self, x, out, *args, **kwargs):
            f, g = predict(np.clip(np.round(x), 0, highs).astype(np.int64))
            out["F"] = f
            if g is not None:
                out["G"] = g[:, None]

    size = max(settings.population, 50)
    blocks, start = space.blocks(), None
    if len(blocks) > 1 and len(front):
        k = round(settings.block_rate * size)
        start = np.vstack(
            [block_variations(space, front, blocks, rng, k), space.sample(size - k, rng)]
        )
    algorithm = nsga2_algorithm(size, blocks, settings.block_rate, start)
    result = minimize(
        Predicted(),
        algorithm,
        ("n_gen", max(2, settings.inner_evals // size)),
        seed=int(rng.integers(2**31)),
        verbose=False,
    )
    return np.clip(np.round(result.pop.get("X")), 0, highs).astype(np.int64)


def nsga2_algorithm(
    pop_size: int,
    blocks: tuple[np.ndarray, ...] = (),
    block_rate: float = 0.0,
    start: np.ndarray | None = None,
) -> Any:
    """pymoo NSGA-II with the operators of ``_nsga2`` (shared with benchmarks/search.py); with
    several ``blocks``, a share ``block_rate`` of the offspring keep their parent outside one
    block; ``start``: the initial population (rows of indices; default random)."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling

    algorithm = NSGA2(
        pop_size=pop_size,
        sampling=IntegerRandomSampling() if start is None else start.astype(float),
        crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
        mutation=PM(prob=1.0, eta=20, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=True,
    )
    algorithm.mating.n_max_iterations = 5  # a converged population: stop retrying, go on
    if len(blocks) > 1 and block_rate > 0:
        algorithm.mating = _block_mating(algorithm.mating, blocks, block_rate)
    return algorithm


def _block_mating(mating: Any, blocks: tuple[np.ndarray, ...], rate: float) -> Any:
    """``mating`` (selection, SBX, mutation) whose offspring, each with probability ``rate``,
    take the SBX-and-mutation values in one random block only and their own parent's values
    elsewhere (SBX's offspring ``k`` of a mating descends from its parent ``k``)."""
    import math

    from pymoo.core.mating import Mating

    class BlockMating(Mating):
        def _do(self, problem, pop, n_offsprings, parents=None, random_state=None, **kwargs):
            # the parents are selected here (as Mating does) to know each offspring's own
            n_matings = math.ceil(n_offsprings / self.crossover.n_offsprings)
            parents = self.selection(
                problem,
                pop,
                n_matings,
                n_parents=self.crossover.n_parents,
                random_state=random_state,
                **kwargs,
            )
            off = super()._do(problem, pop, n_offsprings, parents, random_state, **kwargs)
            x = off.get("X")
            own = _offspring_parents(parents)
            chosen = random_state.integers(len(blocks), size=len(x))
            for j in np.flatnonzero(random_state.random(len(x)) < rate):
                keep = np.ones(x.shape[1], bool)
                keep[blocks[chosen[j]]] = False
                x[j, keep] = own[j, keep]
            off.set("X", x)
            return off

    return BlockMating(
        mating.selection,
        mating.crossover,
        mating.mutation,
        repair=mating.repair,
        eliminate_duplicates=mating.eliminate_duplicates,
        n_max_iterations=mating.n_max_iterations,
    )


def _offspring_parents(parents: Any) -> np.ndarray:
    """Each offspring's own parent's values, in the order pymoo's crossover lays offspring out
    (offspring ``k`` of every mating, then ``k + 1``), from the selected individuals."""
    x = np.array([[individual.X for individual in mating] for mating in parents])
    return np.swapaxes(x, 0, 1).reshape(-1, x.shape[-1])
