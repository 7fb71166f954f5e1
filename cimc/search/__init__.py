"""Joint search of pass options and hardware parameters: predictor-guided NSGA-II over a
:class:`Space`, true evaluations through one cached path, every result in a SQLite study.

``cimc.search(model, ...)`` is :func:`run` (the package is callable through a hook in
``cimc/__init__.py``); it returns the :class:`Study`.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from ..errors import OptionError
from .cache_limit import CACHE_GB
from .evaluate import Evaluator, Metrics, evaluate
from .executor import EvaluationFailed, cluster_executor, process_pool
from .loop import Settings, hypervolume, pareto_mask, run_loop
from .objectives import OBJECTIVES, Constraints, Objective, parse_objectives, register_objective
from .predictors import Predictor, rank_metrics
from .space import Space
from .study import Study, StudyError

__all__ = [
    "OBJECTIVES",
    "Objective",
    "register_objective",
    "Constraints",
    "EvaluationFailed",
    "Evaluator",
    "Metrics",
    "Predictor",
    "Settings",
    "Space",
    "Study",
    "StudyError",
    "cluster_executor",
    "evaluate",
    "hypervolume",
    "pareto_mask",
    "process_pool",
    "rank_metrics",
    "run",
]


def run(
    model: str | Path | None,
    target: Any = "cimpool-sram",
    *,
    family: str | None = None,
    study: str | Path = "cimc-study",
    space: str | Path | Space | None = None,
    objectives: tuple[str, ...] | None = None,
    budget: int = 100,
    population: int = 20,
    data: str | Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    max_area: float | None = None,
    min_fidelity: float | None = None,
    executor: Executor | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    cache_gb: float = CACHE_GB,
) -> Study:
    """Search (or resume the search in ``study``) and return the study. With an elastic
    ``family`` (and ``model`` None) the family's architecture is searched too. Objectives
    default to fidelity and cycles; for a family, accuracy and cycles (CiMNet's), or cycles
    and energy where its weights are random."""
    from ..targets.params import Target, load_target
    from .evaluate import load_data

    if not cache_gb > 0:
        raise OptionError(f"--cache-gb {cache_gb} must be positive (the cache's size limit)")
    if budget < population or population < 2:
        raise OptionError(
            f"--budget {budget} is smaller than --population {population} (or the population is "
            "below 2); the initial population alone needs that many true evaluations"
        )
    if (model is None) == (family is None):
        raise OptionError("give a model or --family (one of them)")
    if model is not None and not Path(model).is_file():
        raise OptionError(f"model {model} does not exist; give an .onnx file")
    tgt = target if isinstance(target, Target) else load_target(target)
    sp = space if isinstance(space, Space) else Space.from_target(tgt, space, family)
    if family is not None:
        from . import architecture

        if data is not None or input_shapes:
            raise OptionError(
                f"--family {family} brings its own data and input shape; drop --data and "
                "--input-shape"
            )
        objectives = objectives or architecture.default_objectives(family)
        architecture.check_objectives(family, objectives)
        has_labels = architecture.has_labels(family)
        identity = {
            "family": family,
            "weights": architecture.weights_digest(family),
            "calibration": architecture.calibration_inputs(family),
        }
    else:
        from ..frontend import import_onnx

        graph = import_onnx(str(model), input_shapes)
        has_labels = load_data(graph, data).labels is not None
        identity = {
            "model_sha256": _sha256(model),
            "input_shapes": input_shapes,
            "data_sha256": None if data is None else _sha256(data),
        }
    objectives = objectives or ("fidelity", "cycles")
    objs = parse_objectives(list(objectives), has_labels)
    settings = Settings(
        tuple(objs),
        budget,
        population,
        seed,
        Constraints(max_area, min_fidelity),
        initial=(sp.base_config(),),
    )
    # a resumed study keeps what its rows were measured with: the space, the data, the seed
    # that drew its rounds (the objectives may change: every row holds every metric)
    st = Study(study, identity | {"space": sp.describe(), "seed": seed})
    st.set_meta(
        "settings",
        {
            "model": None if model is None else str(model),
            "family": family,
            "objectives": list(objectives),
            "budget": budget,
            "population": population,
            "seed": seed,
            "data": None if data is None else str(data),
            "random_inputs": data is None and not has_labels,
            "input_shapes": input_shapes,
            "max_area": max_area,
            "min_fidelity": min_fidelity,
            "base_config": sp.base_config(),
        },
    )
    evaluator = Evaluator(
        "" if model is None else str(model),
        sp,
        input_shapes,
        None if data is None else str(data),
        str(st.folder / "cache"),
        cache_gb=cache_gb,
    )
    run_loop(sp, evaluator, st, settings, executor, progress)
    if family is not None and has_labels:
        _score_front_on_test(st, evaluator)
    return st


def _sha256(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _score_front_on_test(study: Study, evaluator: Evaluator) -> None:
    """Test-split accuracy of every final Pareto point, kept in the study (``test_accuracy``,
    by config hash): the search chose them on validation accuracy, so that number is biased."""
    from .architecture import test_accuracy
    from .report import pareto_rows

    scores = study.meta().get("test_accuracy", {})
    for row in pareto_rows(study):
        if row.hash not in scores:
            scores[row.hash] = test_accuracy(evaluator, row.config)
    study.set_meta("test_accuracy", scores)


class _CallableModule(types.ModuleType):
    """Lets ``cimc.search(...)`` call :func:`run` while ``cimc.search.Space`` etc. stay names."""

    def __call__(self, *args: Any, **kwargs: Any) -> Study:
        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
