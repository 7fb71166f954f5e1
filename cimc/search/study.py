"""The study: a SQLite database (stdlib sqlite3, WAL) holding every true evaluation.

One row per evaluation, committed as soon as it finishes (config, its hash, metrics, wall time,
round, error, what the predictors expected), plus the model's digest, the space and the
settings. Only the driver process writes it. A rerun reads finished rows instead of recomputing
them; a file made for another model or space is refused.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CimcError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evals (
    id INTEGER PRIMARY KEY,
    hash TEXT UNIQUE NOT NULL,
    round INTEGER NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL,
    predicted TEXT,
    error TEXT,
    seconds REAL NOT NULL,
    finished REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (round INTEGER PRIMARY KEY, info TEXT NOT NULL);
"""


class StudyError(CimcError):
    """The study file belongs to another model or space, or is not a cimc study."""


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Row:
    """One stored true evaluation."""

    hash: str
    round: int
    config: dict[str, Any]
    metrics: dict[str, Any]
    predicted: dict[str, float] | None
    seconds: float

    @property
    def feasible(self) -> bool:
        return self.metrics.get("error") is None


class Study:
    """A study folder: ``study.db`` plus the compression cache and the reports."""

    def __init__(self, folder: str | Path, identity: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.path = self.folder / "study.db"
        if self.folder.exists() and not self.folder.is_dir():
            raise StudyError(f"--study {self.folder} is a file; give a folder (new or a study's)")
        if identity is None and not self.path.is_file():
            raise StudyError(f"{self.path} does not exist; give the folder of a cimc search study")
        if identity is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "cache").mkdir(exist_ok=True)
        self.db = sqlite3.connect(self.path)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StudyError(f"{self.path} is not a cimc study database ({exc})") from None
        if identity is not None:
            self._claim(identity)
        elif "settings" not in self.meta():
            raise StudyError(
                f"{self.path} holds no search settings: not a study a search has run in (or "
                "it was damaged); give another folder"
            )

    def _claim(self, identity: dict[str, Any]) -> None:
        stored = self.meta()
        for key, value in identity.items():
            text = json.dumps(value, sort_keys=True, default=str)
            if key in stored and stored[key] != json.loads(text):
                raise StudyError(
                    f"study {self.folder} was made for another {key} (stored "
                    f"{_short(stored[key])}, now {_short(value)}); use a new --study folder "
                    "or the original inputs"
                )
        with self.db:
            for key, value in identity.items():
                self.db.execute(
                    "INSERT OR IGNORE INTO meta VALUES (?, ?)",
                    (key, json.dumps(value, sort_keys=True, default=str)),
                )

    def meta(self) -> dict[str, Any]:
        return {k: self._json(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def set_meta(self, key: str, value: Any) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=str))
            )

    def add(self, row: Row) -> None:
        """Store one finished evaluation (a config already stored is left as it is)."""
        with self.db:
            self.db.execute(
                "INSERT OR IGNORE INTO evals (hash, round, config, metrics, predicted, error, "
                "seconds, finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.hash,
                    row.round,
                    json.dumps(row.config, default=str),
                    json.dumps(row.metrics),
                    None if row.predicted is None else json.dumps(row.predicted),
                    row.metrics.get("error"),
                    row.seconds,
                    time.time(),
                ),
            )

    def rows(self) -> list[Row]:
        cur = self.db.execute(
            "SELECT hash, round, config, metrics, predicted, seconds FROM evals ORDER BY id"
        )
        return [
            Row(h, r, self._json(c), self._json(m), None if p is None else self._json(p), s)
            for h, r, c, m, p, s in cur
        ]

    def set_round(self, number: int, info: dict[str, Any]) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?, ?)", (number, json.dumps(info))
            )

    def rounds(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT info FROM rounds ORDER BY round")
        return [self._json(info) for (info,) in cur]

    def _json(self, text: str) -> Any:
        """A stored record; one that is not JSON means the database was altered."""
        try:
            return json.loads(text)
        except (TypeError, json.JSONDecodeError):
            raise StudyError(
                f"{self.path} holds a damaged record ({str(text)[:40]!r}); use a new --study folder"
            ) from None

    def close(self) -> None:
        self.db.close()


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:16] + "..." + text[-16:]
