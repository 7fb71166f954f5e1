"""Objective predictors on one-hot encodings (CiMNet), fitted as DyNAS-T's LINAS does.

Ridge (alpha 0.1..10.0 step 0.1) and RBF SVR (gamma "auto", epsilon 0, C in 1..100), each tuned by
5-fold cross-validation on negative MAPE; the better CV score is kept. Labels are divided by a
power of ten before fitting (DyNAS-T). Features with zero variance (variables the training rows
never vary) are dropped (DyNAS-T PR #52). Positive cost objectives (cycles, energy, area) are
fitted on their logarithm [ours]: hardware parameters act on them multiplicatively, which a
linear model on one-hot features captures only in log space.
Any scikit-learn regressor can replace the Ridge/SVR choice (``estimator=``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RIDGE_ALPHAS = np.round(np.arange(0.1, 10.01, 0.1), 1)  # DyNAS-T's grid, all 100 values
SVR_CS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100)
"""DyNAS-T tries every integer C in 1..100; 12 log-spaced values of that range cost an eighth
as much, and the CV error varies slowly with C (an SVR fit with epsilon 0 keeps every sample as
a support vector, so 500 fits per objective per round would take seconds)."""


class Predictor:
    """One objective's regressor: fit on encodings and true values, predict for new encodings."""

    def __init__(self, estimator: Any = None, log: bool = False, folds: int = 5):
        self.estimator, self.log, self.folds = estimator, log, folds
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
        self.model, self.chosen, self.cv_score = _best_of_grids(feats, labels, self.folds)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        feats = self.select.transform(x) if self.select else x
        out = self.model.predict(feats) * self.scale
        return np.exp(out) if self.log else out


def _best_of_grids(x: np.ndarray, y: np.ndarray, folds: int) -> tuple[Any, str, float]:
    """Ridge and RBF SVR tuned by k-fold CV on negative MAPE; the better one, refitted."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold
    from sklearn.svm import SVR

    splits = list(KFold(max(2, min(folds, len(y)))).split(x))
    ridge = _ridge_cv_scores(x, y, splits)
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
    r, s = int(np.argmax(ridge)), int(np.argmax(svr))
    if ridge[r] >= svr[s]:
        return Ridge(alpha=RIDGE_ALPHAS[r]).fit(x, y), "Ridge", float(ridge[r])
    return SVR(kernel="rbf", gamma="auto", epsilon=0.0, C=SVR_CS[s]).fit(x, y), "SVR", float(svr[s])


def _ridge_cv_scores(x: np.ndarray, y: np.ndarray, splits: list) -> np.ndarray:
    """Mean CV negative MAPE of Ridge (with intercept) for every alpha, from one SVD per fold:
    the whole DyNAS-T grid costs what one fit does."""
    scores = np.zeros(len(RIDGE_ALPHAS))
    for tr, te in splits:
        xm, ym = x[tr].mean(axis=0), y[tr].mean()
        u, sv, vt = np.linalg.svd(x[tr] - xm, full_matrices=False)
        uty = u.T @ (y[tr] - ym)
        for i, alpha in enumerate(RIDGE_ALPHAS):
            coef = vt.T @ (sv / (sv**2 + alpha) * uty)
            scores[i] -= mape(y[te], (x[te] - xm) @ coef + ym)
    return scores / len(splits)


def _neg_mape(estimator: Any, x: np.ndarray, y: np.ndarray) -> float:
    return -mape(y, estimator.predict(x))


def mape(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute percentage error (in %); zero true values count against their magnitude 1."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    denom = np.where(y_true == 0, 1.0, np.abs(y_true))
    return float(np.mean(np.abs(y_pred - y_true) / denom) * 100)


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
