"""The sweep's results store (sweeps/store.py): a write is one transaction, and a read-only, a locked and a
non-SQLite file each say what they are, not "not a circuitfind results store" (issue 19, item 13)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from circuitfind.cli.main import main
from circuitfind.errors import OutputError
from circuitfind.sweeps import ResultsStore
from circuitfind.sweeps.store import COLUMNS


def _a_store(tmp_path):
    path = tmp_path / "out" / "results.sqlite"
    with ResultsStore(path) as store:
        store.put({"cell_id": "c1", "status": "done", "spec": "{}"})
    return path


def test_a_read_only_results_store_says_it_is_read_only(tmp_path, monkeypatch, capsys):
    path = _a_store(tmp_path)
    real_connect = sqlite3.connect

    def read_only(database, **kwargs):  # what a read-only mount or file gives (root ignores file modes)
        return real_connect(f"file:{database}?mode=ro", uri=True, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only)
    with pytest.raises(OutputError, match=r"is read-only .*attempt to write a readonly database.*chmod u\+w") as e:
        ResultsStore(path)
    assert "not a circuitfind results store" not in str(e.value)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"out": str(path.parent), "grid": {"model": "m", "task": "ioi"}}))
    assert main(["sweep", str(spec), "--table"]) == 2
    err = capsys.readouterr().err
    assert "is read-only" in err and "Traceback" not in err


def test_a_locked_results_store_says_who_may_hold_it(tmp_path):
    path = _a_store(tmp_path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # an SQL client (or another sweep) in the middle of a write
    try:
        with pytest.raises(OutputError, match=r"is locked: another process holds a write transaction.*0\.2 s") as e:
            ResultsStore(path, busy_timeout=0.2)
        assert "not a circuitfind results store" not in str(e.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with ResultsStore(path) as store:  # once released, the same store opens with its row
        assert store.finished_ids() == {"c1"}
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all, just text" * 100)
    with pytest.raises(OutputError, match=r"is not a circuitfind results store"):
        ResultsStore(junk)


def test_a_store_write_is_one_transaction(tmp_path):
    path = tmp_path / "results.sqlite"
    good = {"cell_id": "a" * 16, "status": "done", "spec": {"model": "m"}, "metrics": {"faithfulness": 0.5}}
    with ResultsStore(path) as store:
        store.put(good)
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            store.put({**good, "cell_id": "b" * 16, "status": "half-written"})
        with pytest.raises(ValueError, match="unknown store columns"):
            store.put({**good, "cell_id": "c" * 16, "nonsense": 1})
        rows = store.rows()
    assert [r["cell_id"] for r in rows] == ["a" * 16] and rows[0]["metrics"] == {"faithfulness": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]  # one file at rest, no journal left
    (tmp_path / "junk.sqlite").write_text("not a database")
    with pytest.raises(OutputError, match="not a circuitfind results store"):
        ResultsStore(tmp_path / "junk.sqlite")


def test_the_sweep_store_has_interval_columns_and_adds_them_to_an_older_store(tmp_path):
    for name in ("faithfulness_lo", "faithfulness_hi", "cpr_lo", "cpr_hi", "cmd_lo", "cmd_hi"):
        assert COLUMNS[name] == "REAL"
    path = tmp_path / "old.sqlite"
    old_cols = {k: v for k, v in COLUMNS.items() if not k.endswith(("_lo", "_hi"))}
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('format_version', '1')")
    conn.execute(f"CREATE TABLE cells ({', '.join(f'{k} {v}' for k, v in old_cols.items())})")
    conn.commit()
    conn.close()
    with ResultsStore(path) as store:
        store.put({"cell_id": "a", "status": "done", "spec": "{}", "faithfulness": 0.9, "faithfulness_lo": 0.8})
        row = store.conn.execute("SELECT faithfulness_lo, faithfulness_hi FROM cells WHERE cell_id = 'a'").fetchone()
    assert row == (0.8, None)
