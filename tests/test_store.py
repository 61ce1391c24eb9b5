"""The results store: keys and duplicates, WAL and concurrent writers, schema versions, JSONL round trips."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import sqlite3

import pytest

from ddbench.records import store as store_mod
from ddbench.errors import StoreError
from ddbench.records.store import KEY_FIELDS, ResultStore, record_key, summary


def make_record(method="mgd3", dataset="fashion", ipc=10, seed=0, protocol="dc", arch="convnet3", eval_seed=0,
                acc=50.0, **over):
    rec = dict(method=method, dataset=dataset, ipc=ipc, seed=seed, protocol=protocol, arch=arch,
               eval_seed=eval_seed, config_hash="0123456789abcdef", acc_last=acc, acc_best=acc + 1.5, best_epoch=300,
               method_version="2", protocol_version=1,
               method_config={"guidance": {"scale": 0.1 + 0.2, "steps": 50}, "name": "mgd³ – ü"},
               protocol_config={"epochs": 300, "lr": 0.01}, distilled_sha256="ab" * 32,
               distilled_path="/runs/x/distilled", code_version="0.1.0+abc1234", device="cpu (2 cores)",
               hardware={"cpu_count": 2, "torch": "2.14.1", "cuda": None},
               timings={"prepare": 1.25, "distill": 3.5, "evaluate": 10.0},
               peak_mem={"distill": 512.0, "evaluate": 1024.5}, curve=[[100, acc - 2], [300, acc]],
               extra={"soft_label_bytes": 0}, created_at="2026-01-02T03:04:05+00:00", host="node1")
    rec.update(over)
    return rec


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "results.db") as s:
        yield s


# ---------------------------------------------------------------------------------------------- basics

def test_add_query_has(store):
    assert store.add(make_record(eval_seed=0, acc=40.0))
    assert store.add(make_record(eval_seed=1, acc=42.0))
    assert store.add(make_record(dataset="digits", acc=90.0))
    assert len(store) == 3
    assert store.has(make_record(eval_seed=1))
    assert not store.has(make_record(eval_seed=2))
    got = store.query(dataset="fashion")
    assert [r["eval_seed"] for r in got] == [0, 1] and [r["acc_last"] for r in got] == [40.0, 42.0]
    rec = got[0]
    # JSON columns come back as Python objects; numeric versions are stored as text
    assert rec["method_config"]["guidance"]["scale"] == 0.1 + 0.2
    assert rec["curve"] == [[100, 38.0], [300, 40.0]] and rec["protocol_version"] == "1"
    assert set(rec) == set(store_mod.COLUMNS)
    assert [r["dataset"] for r in store.query(dataset=["digits", "fashion"], eval_seed=0)] == ["digits", "fashion"]
    df = store.to_dataframe(method="mgd3")
    assert len(df) == 3 and list(df.columns) == list(store_mod.COLUMNS)
    assert df["acc_last"].mean() == pytest.approx((40 + 42 + 90) / 3)


def test_add_fills_provenance_and_optional_fields(store):
    minimal = {k: make_record()[k] for k in KEY_FIELDS + ("acc_last", "acc_best")}
    assert store.add(minimal)
    rec = store.query()[0]
    assert rec["config_hash"] == "0123456789abcdef"
    assert rec["created_at"].endswith("+00:00") and rec["host"] and rec["code_version"] == store_mod.code_version()
    assert rec["timings"] is None and rec["best_epoch"] is None


def test_duplicate_keeps_existing_unless_replace(store):
    assert store.add(make_record(acc=40.0))
    assert store.add(make_record(acc=99.0)) is False
    assert [r["acc_last"] for r in store.query()] == [40.0]
    assert store.add(make_record(acc=99.0), replace=True)
    assert [r["acc_last"] for r in store.query()] == [99.0] and len(store) == 1


@pytest.mark.parametrize("change, match", [
    ({"eval_seed": None}, "eval_seed"),
    ({"acc_last": None}, "acc_last"),
    ({"ipc": "10"}, "'ipc'.*integer"),
    ({"ipc": True}, "'ipc'.*integer"),
    ({"acc_best": float("nan")}, "finite"),
    ({"timings": [1, 2]}, "JSON object"),
    ({"extra": {"x": object()}}, "JSON"),
    ({"acc_lsat": 1.0}, "Did you mean acc_last"),
])
def test_invalid_records_are_refused(store, change, match):
    rec = make_record()
    rec.update(change)
    with pytest.raises(StoreError, match=match):
        store.add(rec)
    assert len(store) == 0


def test_record_key_and_filters(store):
    assert record_key(make_record()) == ("mgd3", "fashion", 10, 0, "dc", "convnet3", 0, "0123456789abcdef")
    with pytest.raises(StoreError, match="lacks key field.*arch"):
        store.has({k: 1 for k in KEY_FIELDS if k != "arch"})
    with pytest.raises(StoreError, match="Did you mean dataset"):
        store.query(datset="fashion")


# ---------------------------------------------------------------------------------------------- database

def test_wal_mode_and_schema_version_on_disk(tmp_path):
    path = tmp_path / "r.db"
    ResultStore(path).close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION
    con.close()
    with ResultStore(tmp_path) as s:  # a directory means <dir>/results.db
        assert s.path == tmp_path / "results.db"


def _writer(path, worker, barrier, errors):
    barrier.wait()  # both processes open the (not yet existing) store and write at the same moment
    try:
        with ResultStore(path) as s:
            for i in range(50):
                assert s.add(make_record(seed=worker, eval_seed=i, acc=float(i), host=f"w{worker}"))
    except Exception as e:  # reported to the parent: a locked database must fail the test
        errors.put(f"worker {worker}: {type(e).__name__}: {e}")
        raise


def test_two_processes_write_concurrently(tmp_path):
    ctx = mp.get_context("spawn")
    path = tmp_path / "sub" / "results.db"
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(path), w, barrier, errors)) for w in (0, 1)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(120)
        messages = []
        while True:
            try:
                messages.append(errors.get(timeout=0.5))
            except queue.Empty:
                break
        assert messages == [] and [p.exitcode for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
    with ResultStore(path) as s:
        assert len(s) == 100
        assert sorted((r["seed"], r["eval_seed"]) for r in s.query()) == [(w, i) for w in (0, 1) for i in range(50)]


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "r.db"
    ResultStore(path).close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {store_mod.SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match=f"schema {store_mod.SCHEMA_VERSION + 1}.*upgrade ddbench"):
        ResultStore(path)


def test_older_schema_is_migrated(tmp_path, monkeypatch):
    path = tmp_path / "r.db"
    with ResultStore(path) as s:
        s.add(make_record())
    # a future schema step: an older store gains it on open, keeping its rows
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS + ["ALTER TABLE results ADD COLUMN note TEXT"])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", store_mod.SCHEMA_VERSION + 1)
    with ResultStore(path) as s:
        assert len(s) == 1 and s.query()[0]["acc_last"] == 50.0
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION
    assert "note" in [r[1] for r in con.execute("PRAGMA table_info(results)")]
    con.close()


# The schema-1 table exactly as ddbench 0.1 shipped it: the key had no config hash.
V1_TABLE = """CREATE TABLE results (
  id INTEGER PRIMARY KEY, method TEXT NOT NULL, dataset TEXT NOT NULL, ipc INTEGER NOT NULL, seed INTEGER NOT NULL,
  protocol TEXT NOT NULL, arch TEXT NOT NULL, eval_seed INTEGER NOT NULL, acc_last REAL NOT NULL,
  acc_best REAL NOT NULL, best_epoch INTEGER, method_version TEXT, protocol_version TEXT, method_config TEXT,
  protocol_config TEXT, distilled_sha256 TEXT, distilled_path TEXT, code_version TEXT, device TEXT, hardware TEXT,
  timings TEXT, peak_mem TEXT, curve TEXT, extra TEXT, created_at TEXT, host TEXT,
  UNIQUE (method, dataset, ipc, seed, protocol, arch, eval_seed))"""


def test_schema_1_store_opens_migrates_and_keeps_every_row(tmp_path):
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.execute(V1_TABLE)
    rows = [("random", "digits", 1, 0, "dc", "convnet3", e, 30.0 + e, 31.0, '{"epochs": 1}', "1") for e in range(3)]
    rows.append(("random", "digits", 1, 0, "dc", "convnet3", 9, 60.0, 61.0, '{"epochs": 3}', "1"))
    con.executemany("INSERT INTO results (method, dataset, ipc, seed, protocol, arch, eval_seed, acc_last, acc_best, "
                    "protocol_config, protocol_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    with ResultStore(path) as s:
        got = s.query()
        assert len(s) == 4 and [r["acc_last"] for r in got] == [30.0, 31.0, 32.0, 60.0]
        hashes = [r["config_hash"] for r in got]
        assert all(h.startswith("rec-") for h in hashes)
        assert len(set(hashes[:3])) == 1 and hashes[3] != hashes[0]  # another protocol config: another hash
        assert got[0]["protocol_config"] == {"epochs": 1}
        # the new key: the same seven fields under a new config hash are a new row, the old one stays
        assert s.add(dict(got[0], config_hash="fresh", acc_last=99.0))
        assert sorted(r["acc_last"] for r in s.query(eval_seed=0)) == [30.0, 99.0]
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION == 2
    assert "config_hash" in [r[1] for r in con.execute("PRAGMA table_info(results)")]
    con.close()


def v1_store(path):
    """A schema-1 store as ddbench 0.1 wrote it, with one row."""
    con = sqlite3.connect(path)
    con.execute(V1_TABLE)
    con.execute("INSERT INTO results (method, dataset, ipc, seed, protocol, arch, eval_seed, acc_last, acc_best, "
                "protocol_config, protocol_version) VALUES ('random', 'digits', 1, 0, 'dc', 'convnet3', 0, 30.0, "
                "31.0, '{\"epochs\": 1}', '1')")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()


def test_a_schema_1_store_still_migrates_after_a_column_is_added(tmp_path, monkeypatch):
    """The next schema step adds a column to COLUMNS and appends its ALTER TABLE: an old store must take every
    step as shipped (schema 1 -> 2 may not create the new column already, or the ALTER would find it twice)."""
    path = tmp_path / "old.db"
    v1_store(path)
    monkeypatch.setattr(store_mod, "COLUMNS", {**store_mod.COLUMNS, "note": ("TEXT", "str")})
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS + ["ALTER TABLE results ADD COLUMN note TEXT"])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", store_mod.SCHEMA_VERSION + 1)
    with ResultStore(path) as s:
        (row,) = s.query()
        assert (row["acc_last"], row["protocol_config"]) == (30.0, {"epochs": 1}) and row["config_hash"]
    con = sqlite3.connect(path)
    assert [r[1] for r in con.execute("PRAGMA table_info(results)")].count("note") == 1
    assert con.execute("PRAGMA user_version").fetchone()[0] == 3
    con.close()


def test_the_migrations_build_exactly_the_columns_records_have(tmp_path):
    """A fresh store and a migrated schema-1 store have the columns of COLUMNS, in order: a field added to
    COLUMNS without its migration step fails here."""
    v1_store(tmp_path / "old.db")
    ResultStore(tmp_path / "new.db").close()
    ResultStore(tmp_path / "old.db").close()
    for name in ("new.db", "old.db"):
        con = sqlite3.connect(tmp_path / name)
        assert [r[1] for r in con.execute("PRAGMA table_info(results)")] == ["id", *store_mod.COLUMNS], name
        con.close()


def test_records_differing_only_in_config_hash_are_two_rows_and_two_summary_groups(store):
    assert store.add(make_record(acc=40.0, config_hash="aaaa"))
    assert store.add(make_record(acc=80.0, config_hash="bbbb"))
    assert store.add(make_record(acc=10.0, config_hash="aaaa")) is False  # same key: kept
    assert len(store) == 2 and store.has(make_record(config_hash="bbbb")) and not store.has(make_record())
    rows = summary(store.query())
    assert [(r["config_hash"], r["acc_last_mean"], r["n"]) for r in rows] == [("aaaa", 40.0, 1), ("bbbb", 80.0, 1)]


def test_older_export_without_config_hash_imports_with_a_derived_hash(tmp_path, store):
    old = {k: v for k, v in make_record().items() if k != "config_hash"}
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(old) + "\n")
    assert tuple(store.import_jsonl(path)) == (1, 0)
    assert tuple(store.import_jsonl(path)) == (0, 1)  # the derived hash is stable: importing twice adds nothing
    assert store.query()[0]["config_hash"] == store_mod.derived_config_hash(old)


def test_unwritable_or_foreign_paths(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match=r"file\.txt.*--out"):
        ResultStore(blocker / "results.db")
    with pytest.raises(StoreError, match="not a usable results store"):
        ResultStore(blocker)
    foreign = tmp_path / "other.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a ddbench results store"):
        ResultStore(foreign)
    assert sqlite3.connect(foreign).execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # left untouched


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write read-only folders")
def test_read_only_folder(tmp_path):
    ResultStore(tmp_path / "r.db").close()
    tmp_path.chmod(0o555)
    try:
        for name in ("r.db", "new.db"):
            with pytest.raises(StoreError, match=f"{name}.*read-only.*--out"):
                ResultStore(tmp_path / name)
    finally:
        tmp_path.chmod(0o755)


# ---------------------------------------------------------------------------------------------- JSONL

def _fill(store):
    for seed in (1, 0):  # inserted out of key order: the export must still be sorted
        for e in (2, 0, 1):
            store.add(make_record(seed=seed, eval_seed=e, acc=40.0 + seed + e / 3))
    store.add(make_record(method="random", ipc=1, timings=None, curve=[], best_epoch=None))


def test_jsonl_round_trip_is_byte_identical_and_idempotent(tmp_path, store):
    _fill(store)
    a, b = tmp_path / "a.jsonl", tmp_path / "out" / "b.jsonl"
    assert store.export_jsonl(a) == 7
    lines = a.read_text(encoding="utf-8").splitlines()
    assert all(list(json.loads(x)) == sorted(json.loads(x)) for x in lines)
    assert [record_key(json.loads(x)) for x in lines] == sorted(record_key(json.loads(x)) for x in lines)
    with ResultStore(tmp_path / "other.db") as other:
        assert tuple(other.import_jsonl(a)) == (7, 0)
        other.export_jsonl(b)
        assert b.read_bytes() == a.read_bytes()
        result = other.import_jsonl(a)
        assert (result.added, result.skipped, result.conflicts) == (0, 7, [])
        assert len(other) == 7
        assert other.export_jsonl(b, method="random") == 1
    assert [tmp for tmp in (tmp_path / "out").iterdir()] == [b]  # no temporary files left behind


def test_conflicting_import_is_reported_not_overwritten(tmp_path, store):
    _fill(store)
    path = tmp_path / "a.jsonl"
    store.export_jsonl(path)
    lines = path.read_text().splitlines()
    changed = json.loads(lines[0])
    changed["acc_last"], changed["host"] = 1.0, "elsewhere"
    new = make_record(method="zzz")
    path.write_text("\n".join([json.dumps(changed), lines[1], json.dumps(new)]) + "\n")
    added, skipped = result = store.import_jsonl(path)
    assert (added, skipped) == (1, 2)
    [conflict] = result.conflicts
    assert conflict.key == record_key(changed) and conflict.fields == ["acc_last", "host"] and conflict.line == 1
    assert store.query(**dict(zip(KEY_FIELDS, conflict.key)))[0]["acc_last"] != 1.0
    added, skipped = store.import_jsonl(path, replace=True)
    assert (added, skipped) == (1, 2)  # the conflict replaced; the identical and the new record skipped
    assert store.query(**dict(zip(KEY_FIELDS, conflict.key)))[0]["acc_last"] == 1.0


def test_bad_jsonl_imports_nothing(tmp_path, store):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(make_record()) + "\n{not json\n")
    with pytest.raises(StoreError, match=r"bad\.jsonl:2"):
        store.import_jsonl(path)
    path.write_text(json.dumps(make_record()) + "\n" + json.dumps(make_record(seed=1, ipc=0.5)) + "\n")
    with pytest.raises(StoreError, match=r"bad\.jsonl:2: .*'ipc'"):
        store.import_jsonl(path)
    with pytest.raises(StoreError, match="cannot read"):
        store.import_jsonl(tmp_path / "missing.jsonl")
    assert len(store) == 0


# ---------------------------------------------------------------------------------------------- summary

def test_summary_mean_and_sample_std():
    recs = [make_record(seed=s, eval_seed=e, acc=a) for (s, e), a in zip([(0, 0), (0, 1), (1, 0)], [40, 44, 48])]
    recs.append(make_record(method="random", acc=30.0))
    recs.append(make_record(protocol_version="2", acc=10.0))  # another protocol version: its own group
    rows = summary(recs)
    assert [(r["method"], r["protocol_version"], r["n"]) for r in rows] == [("mgd3", "1", 3), ("mgd3", "2", 1),
                                                                           ("random", "1", 1)]
    top = rows[0]
    assert top["acc_last_mean"] == pytest.approx(44.0) and top["acc_last_std"] == pytest.approx(4.0)
    assert top["acc_best_mean"] == pytest.approx(45.5) and top["acc_best_std"] == pytest.approx(4.0)
    assert top["seeds"] == [0, 1] and top["eval_seeds"] == [0, 1]
    assert rows[1]["acc_last_std"] == 0.0 and rows[2]["acc_last_mean"] == 30.0


def test_code_version_names_the_package():
    assert store_mod.code_version().startswith(store_mod.__version__)
