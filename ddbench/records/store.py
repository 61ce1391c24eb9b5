"""The results store: one SQLite row per evaluated (method, dataset, ipc, seed, protocol, arch, eval_seed,
config_hash).

A real database, so that a sweep killed half-way, two runs writing at once, or stores merged from several
machines never lose or duplicate a number:
- WAL journal + a busy timeout: readers never block, concurrent writers queue instead of failing;
- the key is a UNIQUE constraint: adding a row that exists keeps the existing one (nothing computed is lost)
  unless `replace=True`; `config_hash` in the key makes a changed configuration a new row, never a reuse;
- the schema version lives in `PRAGMA user_version`; older stores are migrated on open, newer ones refused;
- JSONL export/import is an exact round trip (sorted keys, stable row order) for publishing and merging.
Columns, types and the version policy: docs/results-schema.md.
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import os
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, TypedDict

from .. import __version__
from ..errors import StoreError
from ..registry import suggest

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- record

KEY_FIELDS = ("method", "dataset", "ipc", "seed", "protocol", "arch", "eval_seed", "config_hash")


class _RequiredFields(TypedDict):
    method: str            # method registry name, e.g. "mgd3"
    dataset: str           # dataset registry name, e.g. "nette"
    ipc: int               # images per class of the distilled set
    seed: int              # distillation seed
    protocol: str          # protocol card name, e.g. "idc"
    arch: str              # evaluation network, e.g. "resnetap10"
    eval_seed: int         # seed of the evaluation run (network init, augmentation, batches)
    config_hash: str       # hash of everything else that can change the number (cellhash.cell_config_hash)
    acc_last: float        # test accuracy (%) after the last epoch: the honest number
    acc_best: float        # best test accuracy (%) over the evaluation points (paper-compatible)


class ResultRecord(_RequiredFields, total=False):
    """One stored result; the first ten fields are required, the rest default to None (see the schema doc)."""

    best_epoch: int | None
    method_version: str | None      # card versions; ints/floats from YAML are stored as text
    protocol_version: str | None
    method_config: dict | None      # resolved configs (JSON)
    protocol_config: dict | None
    distilled_sha256: str | None    # DistilledSet.sha256() of the evaluated set
    distilled_path: str | None
    code_version: str | None        # code_version(): git describe of the checkout, else package version
    device: str | None              # "cpu (2 cores)", "NVIDIA H100 80GB HBM3"
    hardware: dict | None           # cpu count, torch / cuda versions, ... (built by the runner)
    timings: dict | None            # seconds per phase: {"prepare": ..., "distill": ..., "evaluate": ...}
    peak_mem: dict | None           # MB per phase
    curve: list | None              # [[epoch, test accuracy %], ...]
    extra: dict | None              # anything else, e.g. {"soft_label_bytes": ...}
    created_at: str | None          # UTC ISO 8601, filled by add() when absent
    host: str | None                # machine name, filled by add() when absent


# column -> (SQL type, kind); kind drives validation and (de)serialisation. Order = column order everywhere.
COLUMNS: dict[str, tuple[str, str]] = {
    "method": ("TEXT", "name"), "dataset": ("TEXT", "name"), "ipc": ("INTEGER", "int"),
    "seed": ("INTEGER", "int"), "protocol": ("TEXT", "name"), "arch": ("TEXT", "name"),
    "eval_seed": ("INTEGER", "int"), "config_hash": ("TEXT", "name"),
    "acc_last": ("REAL", "float"), "acc_best": ("REAL", "float"), "best_epoch": ("INTEGER", "int"),
    "method_version": ("TEXT", "version"), "protocol_version": ("TEXT", "version"),
    "method_config": ("TEXT", "dict"), "protocol_config": ("TEXT", "dict"),
    "distilled_sha256": ("TEXT", "str"), "distilled_path": ("TEXT", "str"), "code_version": ("TEXT", "str"),
    "device": ("TEXT", "str"), "hardware": ("TEXT", "dict"), "timings": ("TEXT", "dict"),
    "peak_mem": ("TEXT", "dict"), "curve": ("TEXT", "list"), "extra": ("TEXT", "dict"),
    "created_at": ("TEXT", "str"), "host": ("TEXT", "str"),
}
REQUIRED = set(_RequiredFields.__required_keys__)
JSON_KINDS = ("dict", "list")
SCALAR_COLUMNS = [c for c, (_, kind) in COLUMNS.items() if kind not in JSON_KINDS]  # usable as filters


def record_key(record: Mapping[str, Any]) -> tuple:
    """The unique key of a record: (method, dataset, ipc, seed, protocol, arch, eval_seed, config_hash)."""
    missing = [k for k in KEY_FIELDS if record.get(k) is None]
    if missing:
        raise StoreError(f"result record lacks key field(s) {', '.join(missing)}; a record needs all of "
                         f"{', '.join(KEY_FIELDS)}")
    return tuple(_check(k, record[k]) for k in KEY_FIELDS)


def derived_config_hash(record: Mapping[str, Any]) -> str:
    """`rec-<12 hex>`: the config hash of a record made without one (a store of schema 1, an older JSONL
    export, a hand-made record), from the card versions and resolved configs it holds. The runner's hashes
    also cover the dataset identity and the weights used, so a derived hash never equals a runner's: such
    a record is kept and shown as its own cell, and never answers a new run."""
    from ..config import config_hash

    fields = ("method_version", "method_config", "protocol_version", "protocol_config")
    return "rec-" + config_hash({f: _version(record.get(f)) if f.endswith("version") else record.get(f)
                                 for f in fields})


def _with_config_hash(record: Mapping[str, Any]) -> dict:
    rec = dict(record)
    if rec.get("config_hash") is None:
        rec["config_hash"] = derived_config_hash(rec)
    return rec


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy / torch scalars and small arrays
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default)


def _check(col: str, v: Any) -> Any:
    """Validate one value and return its SQLite form (JSON columns as canonical text)."""
    kind = COLUMNS[col][1]
    if v is None and col not in REQUIRED:
        return None
    if kind in JSON_KINDS and isinstance(v, dict if kind == "dict" else (list, tuple)):
        try:
            return _dumps(v)
        except (TypeError, ValueError) as e:
            raise StoreError(f"result field {col!r} is not JSON-serialisable ({e}); store plain numbers, "
                             "strings, lists and dicts") from None
    if not isinstance(v, bool):  # bool is an int subclass; True is never a seed or an accuracy
        if kind == "name" and isinstance(v, str) and v or kind == "str" and isinstance(v, str):
            return v
        if kind == "int" and isinstance(v, numbers.Integral) and -2**63 <= v < 2**63:
            return int(v)
        if kind == "float" and isinstance(v, numbers.Real) and math.isfinite(v):
            return float(v)
        if kind == "version" and isinstance(v, (str, int, float)):
            return str(v)
    raise StoreError(f"result field {col!r} = {v!r:.80}: expected {_EXPECTED[kind]}")


_EXPECTED = {"name": "a non-empty string", "int": "an integer", "float": "a finite number",
             "version": "a version string (or number)", "str": "a string", "dict": "a JSON object (dict)",
             "list": "a JSON array (list)"}


def _to_row(record: Mapping[str, Any]) -> tuple:
    """Validated SQLite row (COLUMNS order) of a record; refuses unknown and missing required fields."""
    unknown = [k for k in record if k not in COLUMNS]
    if unknown:
        raise StoreError(f"result record has unknown field(s) {', '.join(map(repr, unknown))}."
                         f"{suggest(unknown[0], list(COLUMNS))} Put free-form values under 'extra'.")
    missing = [k for k in KEY_FIELDS + ("acc_last", "acc_best") if record.get(k) is None]
    if missing:
        raise StoreError(f"result record lacks required field(s) {', '.join(missing)} "
                         f"(key: {', '.join(KEY_FIELDS)}; accuracies: acc_last, acc_best)")
    return tuple(_check(c, record.get(c)) for c in COLUMNS)


def _from_row(row: Iterable[Any]) -> ResultRecord:
    rec = {}
    for (col, (_, kind)), v in zip(COLUMNS.items(), row):
        rec[col] = json.loads(v) if kind in JSON_KINDS and v is not None else v
    return rec  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- schema

# The shipped schemas, frozen as literals: a migration step must create exactly the table its schema had, whatever
# COLUMNS holds today (a column added later comes with its own step, which would otherwise find it there already).
_V1_COLUMNS = ("method", "dataset", "ipc", "seed", "protocol", "arch", "eval_seed", "acc_last", "acc_best",
               "best_epoch", "method_version", "protocol_version", "method_config", "protocol_config",
               "distilled_sha256", "distilled_path", "code_version", "device", "hardware", "timings", "peak_mem",
               "curve", "extra", "created_at", "host")
_V1_JSON = ("method_config", "protocol_config", "hardware", "timings", "peak_mem", "curve", "extra")
_V1_TYPES = """id INTEGER PRIMARY KEY, method TEXT NOT NULL, dataset TEXT NOT NULL, ipc INTEGER NOT NULL,
  seed INTEGER NOT NULL, protocol TEXT NOT NULL, arch TEXT NOT NULL, eval_seed INTEGER NOT NULL, {hash}
  acc_last REAL NOT NULL, acc_best REAL NOT NULL, best_epoch INTEGER, method_version TEXT, protocol_version TEXT,
  method_config TEXT, protocol_config TEXT, distilled_sha256 TEXT, distilled_path TEXT, code_version TEXT,
  device TEXT, hardware TEXT, timings TEXT, peak_mem TEXT, curve TEXT, extra TEXT, created_at TEXT, host TEXT"""
_V1_TABLE = ("CREATE TABLE results (" + _V1_TYPES.format(hash="")
             + ", UNIQUE (method, dataset, ipc, seed, protocol, arch, eval_seed))")
_V2_TABLE = ("CREATE TABLE results_v2 (" + _V1_TYPES.format(hash="config_hash TEXT NOT NULL,")
             + ", UNIQUE (method, dataset, ipc, seed, protocol, arch, eval_seed, config_hash))")
_INDEX_SQL = "CREATE INDEX results_by_dataset ON results (dataset, protocol, ipc)"


def _add_config_hash(con: sqlite3.Connection) -> None:
    """Schema 1 -> 2: `config_hash` joins the key. SQLite cannot change a UNIQUE constraint in place, so the
    table is copied into a new one; every old row is kept, with the hash derived from its own versions and
    configs (`derived_config_hash`), so that rows of different configs stay apart."""
    con.execute(_V2_TABLE)
    names = ", ".join(_V1_COLUMNS)
    insert = f"INSERT INTO results_v2 (id, {names}, config_hash) VALUES ({', '.join('?' * (len(_V1_COLUMNS) + 2))})"
    for row in con.execute(f"SELECT id, {names} FROM results ORDER BY id").fetchall():
        old = {c: json.loads(v) if c in _V1_JSON and v is not None else v for c, v in zip(_V1_COLUMNS, row[1:])}
        con.execute(insert, (*row, derived_config_hash(old)))
    con.execute("DROP TABLE results")
    con.execute("ALTER TABLE results_v2 RENAME TO results")
    con.execute(_INDEX_SQL)


# MIGRATIONS[i] takes a store from schema i to i + 1 (0 = empty file): SQL statements, or a function of the
# connection for a step SQL alone cannot express. Append only; never edit a shipped step.
MIGRATIONS: list = [
    _V1_TABLE + ";\n" + _INDEX_SQL,
    _add_config_hash,
]
SCHEMA_VERSION = len(MIGRATIONS)
DEFAULT_NAME = "results.db"     # file used when ResultStore is given a directory
BUSY_TIMEOUT_S = 60.0           # how long a writer waits for another process's write before failing


def _unwritable(path: Path, why: Any) -> StoreError:
    return StoreError(f"cannot write the results store at {path}: {why}. Choose a writable location "
                      "with --out DIR (the store is DIR/results.db).")


def _too_new(path: Path, version: int) -> StoreError:
    return StoreError(f"results store {path} was written by ddbench schema {version}, this ddbench reads "
                      f"≤ {SCHEMA_VERSION}: upgrade ddbench (pip install -U ddbench)")


def _raise_for_people(path: Path, e: sqlite3.DatabaseError) -> None:
    """Turn the SQLite errors a person can fix into StoreErrors (others propagate unchanged)."""
    if "readonly" in str(e) or "unable to open" in str(e):
        raise _unwritable(path, e) from None
    if "locked" in str(e):
        raise StoreError(f"results store {path} stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s; "
                         "wait for it to finish, or write to another --out and merge with import") from None


def _migrate(con: sqlite3.Connection, path: Path) -> None:
    """Bring the store to SCHEMA_VERSION inside one write transaction (a failed step changes nothing)."""
    con.execute("BEGIN IMMEDIATE")  # re-read the version under the write lock: another process may have migrated
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:  # a newer ddbench migrated it since we looked: never downgrade the number
            raise _too_new(path, version)
        for step in range(version, SCHEMA_VERSION):
            if callable(MIGRATIONS[step]):
                MIGRATIONS[step](con)
            # statement by statement: executescript() would COMMIT first and break the all-or-nothing step
            for stmt in filter(str.strip, "" if callable(MIGRATIONS[step]) else MIGRATIONS[step].split(";")):
                con.execute(stmt)
            log.info("results store %s migrated from schema %d to %d", path, step, step + 1)
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


def _enable_wal(con: sqlite3.Connection, path: Path) -> None:
    # Switching the journal mode needs an exclusive lock and may report "locked" without waiting for the busy
    # handler while another process does the same on a fresh file, so retry for up to the busy timeout.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    if mode.lower() != "wal":
        raise StoreError(f"results store {path} cannot use WAL journaling (journal_mode={mode}; network file "
                         "systems do not support it): put it on a local disk with --out DIR")


def _open(path: Path) -> sqlite3.Connection:
    """Open (creating or migrating) the store at `path`; every failure a person can fix is a StoreError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(path, e.strerror or e) from None
    for p in (path, path.parent):  # WAL needs the file and its directory (for -wal / -shm) writable
        if p.exists() and not os.access(p, os.W_OK):
            raise _unwritable(path, f"{p} is read-only")
    try:
        # isolation_level=None: autocommit; transactions are explicit (BEGIN IMMEDIATE) where they matter.
        con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.OperationalError as e:
        raise _unwritable(path, e) from None
    try:
        # One statement, so one snapshot: two separate reads could see version 0, then the tables another
        # process created (and versioned) in between, and call a fresh store foreign.
        version, objects = con.execute("SELECT (SELECT user_version FROM pragma_user_version), "
                                       "(SELECT count(*) FROM sqlite_master)").fetchone()
        if version > SCHEMA_VERSION:
            raise _too_new(path, version)
        if version == 0 and objects:
            raise StoreError(f"{path} is an SQLite database but not a ddbench results store (no schema "
                             "version); point --out at another directory")
        _enable_wal(con, path)  # only now: a foreign or newer database is left exactly as it was
        if version < SCHEMA_VERSION:
            _migrate(con, path)
    except sqlite3.DatabaseError as e:
        con.close()
        _raise_for_people(path, e)
        raise StoreError(f"{path} is not a usable results store ({e}); move it away or choose another --out") \
            from None
    except BaseException:
        con.close()
        raise
    return con


# ---------------------------------------------------------------------------------------------- store

class Conflict(NamedTuple):
    """An imported record whose key exists with different content."""

    key: tuple            # record_key of the record
    fields: list[str]     # the columns that differ
    line: int             # line number in the imported file


class ImportResult(tuple):
    """`(added, skipped)` as a 2-tuple, plus `.conflicts` (skipped, or replaced with replace=True)."""

    def __new__(cls, added: int, skipped: int, conflicts: list[Conflict]):
        obj = super().__new__(cls, (added, skipped))
        obj.conflicts = conflicts
        return obj

    added = property(lambda self: self[0])
    skipped = property(lambda self: self[1])


_NAMES = ", ".join(COLUMNS)
_KEY_WHERE = " AND ".join(f"{k} = ?" for k in KEY_FIELDS)
_ORDER = ", ".join(KEY_FIELDS)
_INSERT = f"INSERT INTO results ({_NAMES}) VALUES ({', '.join('?' * len(COLUMNS))}) ON CONFLICT ({_ORDER}) DO "
_KEEP = _INSERT + "NOTHING"
_REPLACE = _INSERT + "UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in KEY_FIELDS)


class ResultStore:
    """The SQLite results store at `path` (a file; a directory means `<dir>/results.db`).

    Safe for several processes at once (WAL + busy timeout). Use as a context manager or call `close()`.
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path).expanduser()
        self.path = path / DEFAULT_NAME if path.is_dir() else path
        self._con: sqlite3.Connection | None = _open(self.path)

    # ---- writing
    def add(self, record: Mapping[str, Any], *, replace: bool = False) -> bool:
        """Insert `record`; True if stored. An existing key is kept (False) unless `replace=True`.

        `created_at`, `host` and `code_version` are filled in when absent (this process made the record), and
        `config_hash` by `derived_config_hash` (a record made without the runner).
        """
        rec = _with_config_hash(record)
        for field, value in (("created_at", _utc_now), ("host", socket.gethostname), ("code_version", code_version)):
            if rec.get(field) is None:
                rec[field] = value()
        row = _to_row(rec)
        return self._execute(_REPLACE if replace else _KEEP, row).rowcount > 0

    def import_jsonl(self, path: str | os.PathLike, *, replace: bool = False) -> ImportResult:
        """Merge the records of a JSONL export; returns `(added, skipped)` with `.conflicts`.

        A record whose key exists with identical content is skipped (importing twice adds nothing); with
        different content it is a conflict: reported, the stored row kept, unless `replace=True`.
        """
        rows = []
        for line, rec in _read_jsonl(Path(path)):  # validate everything before writing anything
            try:
                rows.append((line, _to_row(_with_config_hash(rec))))  # older exports have no config_hash
            except StoreError as e:
                raise StoreError(f"{path}:{line}: {e}") from None
        added, skipped, conflicts = 0, 0, []
        run = self._execute
        run("BEGIN IMMEDIATE")  # one transaction: a failed import leaves the store as it was
        try:
            for line, row in rows:
                old = run(f"SELECT {_NAMES} FROM results WHERE {_KEY_WHERE}", row[:len(KEY_FIELDS)]).fetchone()
                diff = [] if old is None else [c for c, a, b in zip(COLUMNS, old, row) if a != b and c not in LOCATIONS]
                if old is not None and not diff:  # the same result (an export keeps no machine paths: LOCATIONS)
                    skipped += 1
                    continue
                if old is not None:
                    conflicts.append(Conflict(row[:len(KEY_FIELDS)], diff, line))
                    if not replace:
                        skipped += 1
                        continue
                run(_REPLACE, row)
                added += 1
            run("COMMIT")
        except BaseException:
            if self._connection().in_transaction:
                run("ROLLBACK")
            raise
        if conflicts:
            log.warning("%s: %d record(s) conflict with stored results (%s)", path, len(conflicts),
                        "replaced" if replace else "kept the stored ones")
        return ImportResult(added, skipped, conflicts)

    # ---- reading
    def has(self, key: Mapping[str, Any]) -> bool:
        """Whether a row with this key exists (`key` may be a whole record; other fields are ignored; without
        `config_hash`, the one `add` would give it)."""
        sql = f"SELECT 1 FROM results WHERE {_KEY_WHERE} LIMIT 1"
        return self._execute(sql, record_key(_with_config_hash(key))).fetchone() is not None

    def query(self, **filters: Any) -> list[ResultRecord]:
        """Records matching `column=value` filters (a list/tuple/set value means any of them), in key order."""
        where, params = _where(filters)
        rows = self._execute(f"SELECT {_NAMES} FROM results{where} ORDER BY {_ORDER}", params).fetchall()
        return [_from_row(r) for r in rows]

    def to_dataframe(self, **filters: Any):
        """`query(**filters)` as a pandas DataFrame (one column per field; JSON fields as Python objects)."""
        import pandas as pd

        return pd.DataFrame.from_records(self.query(**filters), columns=list(COLUMNS))

    def export_jsonl(self, path: str | os.PathLike, **filters: Any) -> int:
        """Write the matching records as JSONL (sorted keys, key order), atomically; returns the count.
        Published records carry no machine-specific paths: `distilled_path` becomes relative to the run
        directory (the store's folder), or is dropped (None) when the set lies outside it."""
        return write_jsonl(path, self.portable_records(**filters))

    def portable_records(self, **filters: Any) -> list[dict]:
        """`query(**filters)` with `distilled_path` relative to the run directory (None outside it)."""
        return [dict(r, distilled_path=portable_path(r.get("distilled_path"), self.path.parent))
                for r in self.query(**filters)]

    def __len__(self) -> int:
        return self._execute("SELECT count(*) FROM results").fetchone()[0]

    # ---- plumbing
    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            raise StoreError(f"results store {self.path} is closed; open a new ResultStore")
        return self._con

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._connection().execute(sql, tuple(params))
        except sqlite3.OperationalError as e:
            _raise_for_people(self.path, e)
            raise

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _where(filters: Mapping[str, Any]) -> tuple[str, list]:
    """SQL WHERE clause and parameters for `column=value` filters on scalar columns."""
    clauses, params = [], []
    for col, value in filters.items():
        if col not in SCALAR_COLUMNS:
            raise StoreError(f"cannot filter results by {col!r}.{suggest(col, SCALAR_COLUMNS)} "
                             f"Filterable fields: {', '.join(SCALAR_COLUMNS)}")
        if value is None:
            clauses.append(f"{col} IS NULL")
        elif isinstance(value, (list, tuple, set, frozenset)):
            values = sorted(value, key=str)
            clauses.append(f"{col} IN ({', '.join('?' * len(values))})" if values else "0")
            params += values
        else:
            clauses.append(f"{col} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise StoreError(f"cannot read results file {path}: {e.strerror or e}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise StoreError(f"{path}:{i}: not a JSON object ({e.msg}); expected one result record per line") \
                from None
        if not isinstance(rec, dict):
            raise StoreError(f"{path}:{i}: expected a JSON object (one result record per line)")
        yield i, rec


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping]) -> int:
    """Records as JSONL (sorted keys), written atomically; returns the count."""
    records = list(records)
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n" for r in records)
    _atomic_write(Path(path), text)
    return len(records)


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory + rename: readers see the old or the new file."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="\n", dir=path.parent,
                                         prefix=f".{path.name}.", delete=False) as f:
            tmp = f.name
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise StoreError(f"cannot write {path}: {e.strerror or e}; choose a writable path") from None


# ---------------------------------------------------------------------------------------------- summary

SUMMARY_GROUP = ("method", "dataset", "ipc", "protocol", "arch", "method_version", "protocol_version", "config_hash")


def summary(records: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Mean / sample std (n-1; 0 for n=1) / n of acc_last and acc_best over seeds and eval seeds.

    Groups by the key without seed and eval_seed, and by the card versions: numbers of different method or
    protocol versions, or of different config hashes, are never averaged together. Sorted by the group fields.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in records:
        key = tuple(_version(r.get(k)) if k.endswith("_version") else r.get(k) for k in SUMMARY_GROUP)
        groups.setdefault(key, []).append(r)
    out = []
    for key in sorted(groups, key=lambda g: tuple("" if v is None else v for v in g)):
        rows = groups[key]
        entry = dict(zip(SUMMARY_GROUP, key), n=len(rows), seeds=sorted({r["seed"] for r in rows}),
                     eval_seeds=sorted({r["eval_seed"] for r in rows}))
        for metric in ("acc_last", "acc_best"):
            values = [float(r[metric]) for r in rows]
            entry[f"{metric}_mean"] = statistics.fmean(values)
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


LOCATIONS = ("distilled_path",)  # where a set lay on one machine: never what makes two records differ


def portable_path(path: str | None, run_dir: Path) -> str | None:
    """`path` relative to `run_dir` ("distilled/random/digits/ipc1-seed0-…"); None for an absolute path outside
    it (a machine-specific location has no meaning in a published record); a relative path as it is."""
    if not path:
        return path
    p = Path(path)
    if not p.is_absolute():
        return path
    try:
        return p.resolve().relative_to(Path(run_dir).resolve()).as_posix()
    except ValueError:
        return None


def _version(v: Any) -> str | None:
    return None if v is None else str(v)  # as stored: a YAML `version: 1` and "1" are the same version


# ---------------------------------------------------------------------------------------------- provenance

def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@lru_cache(maxsize=1)
def code_version() -> str:
    """`<package version>+<git describe --always --dirty>` of the ddbench checkout, else the package version."""
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():  # only our own checkout: an install inside another repo must not report it
        try:
            out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                                 capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return f"{__version__}+{out.stdout.strip()}"
        except (OSError, subprocess.SubprocessError):
            pass
    return __version__
