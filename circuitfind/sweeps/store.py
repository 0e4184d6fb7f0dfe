"""The results store of a sweep: one SQLite file, one row per cell.

Why SQLite rather than Parquet: it ships with Python (no pyarrow), a row is written in one transaction (a reader,
a crash or Ctrl-C sees the cell's row whole or not at all), rows are updated in place by cell id (a rerun
replaces a failed row instead of appending files), and any SQL client reads it. Parquet files are immutable: a
store that grows cell by cell would be many part files or a rewrite per cell. The journal is SQLite's default
rollback journal, so at rest the store is the one file ``results.sqlite`` (WAL would leave ``-wal``/``-shm`` files).

Only the sweep's driver writes; workers return their results to it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from circuitfind.errors import OutputError

__all__ = ["COLUMNS", "STATUS_DONE", "STATUS_FAILED", "ResultsStore"]

FORMAT_VERSION = 1
STATUS_DONE, STATUS_FAILED = "done", "failed"

COLUMNS: dict[str, str] = {
    "cell_id": "TEXT PRIMARY KEY",
    "status": "TEXT NOT NULL CHECK (status IN ('done', 'failed'))",
    "model": "TEXT",
    "task": "TEXT",
    "method": "TEXT",
    "cut": "TEXT",
    "seed": "INTEGER",
    "spec": "TEXT NOT NULL",  # the cell's fields, JSON
    "faithfulness": "REAL",  # held-out
    "kl": "REAL",  # held-out KL(full || circuit)
    "cpr": "REAL",
    "cmd": "REAL",
    "faithfulness_lo": "REAL",  # 95% bootstrap interval over the held-out prompts (circuitfind.validation)
    "faithfulness_hi": "REAL",
    "cpr_lo": "REAL",
    "cpr_hi": "REAL",
    "cmd_lo": "REAL",
    "cmd_hi": "REAL",
    "n_edges": "INTEGER",
    "fraction": "REAL",
    "metrics": "TEXT",  # every measured number, JSON
    "load_s": "REAL",  # loading the model (0 when the worker had it)
    "discover_s": "REAL",
    "evaluate_s": "REAL",
    "wall_s": "REAL",
    "peak_rss_mb": "REAL",
    "peak_gpu_mb": "REAL",
    "circuit_path": "TEXT",
    "error": "TEXT",
    "traceback": "TEXT",
    "attempts": "INTEGER",
    "worker": "TEXT",
    "finished_at": "TEXT",
}
"""The ``cells`` table: column -> SQL type."""

BUSY_TIMEOUT_S = 30.0
"""How long opening or writing the store waits for another connection's write transaction to end."""


class ResultsStore:
    """A sweep's results, one row per cell, in one SQLite file.

    Every :meth:`put` is its own transaction: once it returns, the row survives Ctrl-C, a crash or a power cut
    (``synchronous=FULL``); if it is interrupted, the store is as it was.

    Args:
        path: the SQLite file (created with its folder when missing).
        busy_timeout: seconds to wait for another connection's write transaction before the store is reported
            locked.

    Raises:
        OutputError: the store cannot be used, saying why: read-only, locked by another process, not an SQLite
            file (or damaged), another store format, a full disk.

    Example:
        >>> with ResultsStore("runs/sweep/results.sqlite") as store:  # doctest: +SKIP
        ...     done = store.finished_ids()
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path).expanduser()
        self.busy_timeout = busy_timeout
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None)  # explicit transactions
        except (OSError, sqlite3.Error) as e:
            raise OutputError(f"cannot open the results store {str(self.path)!r}: {e}; choose another 'out'") from None
        try:
            self.conn.execute("PRAGMA synchronous=FULL")
            with self._transaction():
                self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                cols = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
                self.conn.execute(f"CREATE TABLE IF NOT EXISTS cells ({cols})")
                self._add_missing_columns()
                self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('format_version', ?)", (str(FORMAT_VERSION),))
            (version,) = self.conn.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise OutputError(_what_is_wrong(self.path, e, busy_timeout)) from None
        if int(version) != FORMAT_VERSION:
            self.conn.close()
            raise OutputError(
                f"{str(self.path)!r} has store format {version}; this circuitfind reads format {FORMAT_VERSION}"
            )

    def _add_missing_columns(self) -> None:
        """A store written before a column was added gets it (NULL in its old rows); columns are only added."""
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(cells)")}
        for name, kind in COLUMNS.items():
            if name not in have:
                self.conn.execute(f"ALTER TABLE cells ADD COLUMN {name} {kind}")

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def put(self, row: dict[str, Any]) -> None:
        """Insert or replace the row of ``row["cell_id"]`` (unknown keys are refused, missing ones are NULL)."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown store columns {sorted(unknown)}; expected some of {list(COLUMNS)}")
        row = {k: _sql_value(v) for k, v in row.items()}
        row.setdefault("finished_at", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        try:
            with self._transaction():
                self.conn.execute(f"INSERT OR REPLACE INTO cells ({names}) VALUES ({marks})", tuple(row.values()))
        except sqlite3.OperationalError as e:  # the store became read-only, locked or full during the sweep
            raise OutputError(_what_is_wrong(self.path, e, self.busy_timeout)) from None

    def forget(self, cell_ids: list[str]) -> None:
        """Delete these cells' rows (a rerun then runs them again), in one transaction."""
        with self._transaction():
            self.conn.executemany("DELETE FROM cells WHERE cell_id = ?", [(i,) for i in cell_ids])

    def finished_ids(self, *, include_failed: bool = True) -> set[str]:
        """Ids of the cells finished: done, and failed unless ``include_failed`` is False (a rerun skips them)."""
        statuses = (STATUS_DONE, STATUS_FAILED) if include_failed else (STATUS_DONE,)
        marks = ", ".join("?" for _ in statuses)
        return {r[0] for r in self.conn.execute(f"SELECT cell_id FROM cells WHERE status IN ({marks})", statuses)}

    def rows(self, cell_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts (``spec`` and ``metrics`` parsed), in the order of ``cell_ids`` or of insertion."""
        with closing(self.conn.execute("SELECT * FROM cells ORDER BY rowid")) as cur:
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        for r in rows:
            r["spec"] = json.loads(r["spec"])
            r["metrics"] = json.loads(r["metrics"]) if r["metrics"] else {}
        if cell_ids is None:
            return rows
        by_id = {r["cell_id"]: r for r in rows}
        return [by_id[i] for i in cell_ids if i in by_id]


def _what_is_wrong(path: Path, err: sqlite3.DatabaseError, busy_timeout: float) -> str:
    """What an SQLite error met while opening ``path`` says about the store, and how to fix it."""
    code = getattr(err, "sqlite_errorname", "") or ""
    text = str(err).lower()
    where = f"the results store {str(path)!r}"
    if code.startswith("SQLITE_READONLY") or "readonly" in text:
        folder = path.parent
        why = (
            "the file is not writable"
            if path.exists() and not os.access(path, os.W_OK)
            else f"its folder {str(folder)!r} is not writable"
            if not os.access(folder, os.W_OK)
            else "it is opened read-only (a read-only file system or mount, or file permissions)"
        )
        return (
            f"{where} is read-only ({why}; SQLite: {err}); a sweep writes a row per cell. Make it writable "
            "(chmod u+w on the file and its folder) or choose another 'out'"
        )
    if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return (
            f"{where} is locked: another process holds a write transaction on it and did not finish within "
            f"{busy_timeout:g} s (SQLite: {err}). Another sweep on the same 'out', or an SQL client with an open "
            "transaction, is the usual holder: wait for it to finish or close it, then run again"
        )
    if code.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or "not a database" in text or "malformed" in text:
        return (
            f"{str(path)!r} is not a circuitfind results store ({err}): the file is not an SQLite database, or it "
            "is damaged; choose another 'out' or move it away"
        )
    if code.startswith("SQLITE_FULL") or "disk is full" in text:
        return f"cannot write {where}: the disk is full ({err}); free some space or choose another 'out'"
    return (
        f"cannot use {where}: SQLite says {err} ({code or type(err).__name__}); choose another 'out' or move the "
        "file away"
    )


def _sql_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=_jsonable)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # 0-d tensors and numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
