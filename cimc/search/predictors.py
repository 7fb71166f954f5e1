"""Objective predictors on one-hot encodings (CiMNet), fitted as DyNAS-T's LINAS does.

Ridge (alpha 0.1..10.0 step 0.1) and RBF SVR (gamma "auto", epsilon 0, C in 1..100), each tuned by
5-fold cross-validation on negative MAPE; the best CV score is kept. Labels are divided by a
power of ten before fitting (DyNAS-T). Features with zero variance (variables the training rows
never vary) are dropped (DyNAS-T PR #52). Positive cost objectives (cycles, energy, area) are
fitted on their logarithm [ours]: hardware parameters act on them multiplicatively, which a
linear model on one-hot features captures only in log space.
``pairs`` [ours] names the one-hot blocks of variables that interact with each other: a third
candidate, Ridge on the one-hot plus the products of every two of those blocks, joins the CV.
The CiM hierarchy's levels do (a level's bandwidth matters only while it is the slowest one:
held-out cycles tau in the joint arch x hierarchy space 0.81 -> 0.90, benchmarks/cimnet.py);
pairs over every variable overfit (0.81), as the architecture's rows are few distinct networks.
Any scikit-learn regressor can replace the CV choice (``estimator=``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .space import Space

RIDGE_ALPHAS = np.round(np.arange(0.1, 10.01, 0.1), 1)  # DyNAS-T's grid, all 100 values
SVR_CS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100)
"""DyNAS-T tries every integer C in 1..100; 12 log-spaced values of that range cost an eighth
as much, and the CV error varies slowly with C (an SVR fit with epsilon 0 keeps every sample as
a support vector, so 500 fits per objective per round would take seconds)."""


class Predictor:
    """One objective's regressor: fit on encodings and true values, predict for new encodings."""

    def __init__(
        self,
        estimator: Any = None,
        log: bool = False,
        folds: int = 5,
        pairs: Sequence[slice] = (),
    ):
        self.estimator, self.log, self.folds, self.pairs = estimator, log, folds, tuple(pairs)
        self.chosen = ""
        self.cv_score = float("nan")

    def fit(self, x: np.ndarray, y: np.ndarray) -> Predictor:
        from sklearn.base import clone
        from sklearn.feature_selection import VarianceThreshold

        y = np.asarray(y, dtype=np.float64)
        target = np.log(y) if self.log else y
        self.select = VarianceThreshold(0.0) if np.ptp(x, axis=0).any() else None
        feats = self.select.fit_transform(x) if self.select else x
        peak = np.abs(target).max()
        self.scale = 10.0 ** (math.floor(math.log10(peak)) - 1) if peak > 0 else 1.0
        labels = target / self.scale
        if self.estimator is not None:
            self.model = clone(self.estimator).fit(feats, labels)
            self.chosen = type(self.estimator).__name__
            return self
        crossed = None
        if len(self.pairs) > 1 and np.ptp(prods := products(x, self.pairs), axis=0).any():
            self.select_pairs = VarianceThreshold(0.0)
            crossed = np.hstack([feats, self.select_pairs.fit_transform(prods)])
        self.model, self.chosen, self.cv_score = _best_of_grids(feats, labels, self.folds, crossed)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        feats = self.select.transform(x) if self.select else x
        if self.chosen == "Ridge+pairs":
            feats = np.hstack([feats, self.select_pairs.transform(products(x, self.pairs))])
        out = self.model.predict(feats) * self.scale
        return np.exp(out) if self.log else out


def hierarchy_blocks(space: Space) -> tuple[slice, ...]:
    """The columns of ``space.one_hot`` that encode each CiM hierarchy variable (``pairs``)."""
    from .space import HIERARCHY

    ends = np.cumsum([len(v.choices) for v in space.variables])
    return tuple(
        slice(int(end) - len(v.choices), int(end))
        for v, end in zip(space.variables, ends)
        if v.name in HIERARCHY
    )


def products(x: np.ndarray, blocks: Sequence[slice]) -> np.ndarray:
    """Every product of one column of a block with one column of a later block."""
    out = [
        (x[:, a, None] * x[:, None, b]).reshape(len(x), -1)
        for i, a in enumerate(blocks)
        for b in blocks[i + 1 :]
    ]
    return np.hstack(out)


def _splits(n: int, folds: int) -> list:
    from sklearn.model_selection import KFold

    return list(KFold(max(2, min(folds, n))).split(np.zeros(n)))


def _best_of_grids(
    x: np.ndarray, y: np.ndarray, folds: int, crossed: np.ndarray | None = None
) -> tuple[Any, str, float]:
    """Ridge and RBF SVR on ``x`` (and Ridge on ``crossed``, the one-hot with its block
    products) tuned by k-fold CV on negative MAPE; the best one, refitted."""
    from sklearn.svm import SVR

    splits = _splits(len(y), folds)
    svr = [
        np.mean(
            [
                -mape(
                    y[te],
                    SVR(kernel="rbf", gamma="auto", epsilon=0.0, C=c)
                    .fit(x[tr], y[tr])
                    .predict(x[te]),
                )
                for tr, te in splits
            ]
        )
        for c in SVR_CS
    ]
    candidates = [_ridge_candidate("Ridge", x, y, splits)]
    best_c = SVR_CS[int(np.argmax(svr))]
    candidates.append((max(svr), "SVR", lambda: SVR(gamma="auto", epsilon=0.0, C=best_c), x))
    if crossed is not None:
        candidates.append(_ridge_candidate("Ridge+pairs", crossed, y, splits))
    score, name, make, feats = max(candidates, key=lambda c: c[0])  # ties: the first
    return make().fit(feats, y), name, float(score)


def _ridge_candidate(name: str, x: np.ndarray, y: np.ndarray, splits: list) -> tuple:
    from sklearn.linear_model import Ridge

    scores = _ridge_cv_scores(x, y, splits)
    alpha = RIDGE_ALPHAS[int(np.argmax(scores))]
    return float(scores.max()), name, lambda: Ridge(alpha=alpha), x


def _ridge_cv_scores(x: np.ndarray, y: np.ndarray, splits: list) -> np.ndarray:
    """Mean CV negative MAPE of Ridge (with intercept) for every alpha, from one SVD per fold:
    the whole DyNAS-T grid costs what one fit does."""
    scores = np.zeros(len(RIDGE_ALPHAS))
    for tr, te in splits:
        xm, ym = x[tr].mean(axis=0), y[tr].mean()
        u, sv, vt = np.linalg.svd(x[tr] - xm, full_matrices=False)
        shrink = sv[:, None] / (sv[:, None] ** 2 + RIDGE_ALPHAS[None, :])  # one column per alpha
        preds = ((x[te] - xm) @ vt.T) @ (shrink * (u.T @ (y[tr] - ym))[:, None]) + ym
        scores -= mape(y[te][:, None], preds, axis=0)
    return scores / len(splits)


def mape(y_true: np.ndarray, y_pred: np.ndarray, axis: int | None = None) -> Any:
    """Mean absolute percentage error (in %); zero true values count against their magnitude 1.
    A float, or an array of them along ``axis``."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    denom = np.where(y_true == 0, 1.0, np.abs(y_true))
    out = np.mean(np.abs(y_pred - y_true) / denom, axis=axis) * 100
    return float(out) if axis is None else out


def rank_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAPE, Kendall tau and Spearman rho of predictions against true values."""
    from scipy.stats import kendalltau, spearmanr

    if len(y_true) < 2 or not np.ptp(y_true) or not np.ptp(y_pred):  # ranks undefined
        return {
            "mape": mape(y_true, y_pred),
            "kendall_tau": float("nan"),
            "spearman_rho": float("nan"),
        }
    return {
        "mape": mape(y_true, y_pred),
        "kendall_tau": float(kendalltau(y_true, y_pred).statistic),
        "spearman_rho": float(spearmanr(y_true, y_pred).statistic),
    }
