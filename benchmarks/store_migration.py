"""How long opening a schema-1 results store takes: the one-off migration to schema 2 (config_hash in the key).

Writes a schema-1 store of N rows (the table as ddbench 0.1 shipped it, with full configs in every row), then
times `ResultStore(path)`, which copies every row into the new table with its derived config hash. Prints one
JSON line per N; checks that every row is still there.

    python benchmarks/store_migration.py --rows 1000 10000 100000
"""
from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

from ddbench.records import store as store_mod
from ddbench.records.store import ResultStore


def schema_1_store(path: Path, rows: int) -> None:
    con = sqlite3.connect(path)
    for stmt in store_mod.MIGRATIONS[0].split(";"):
        con.execute(stmt)
    cols = store_mod._V1_COLUMNS
    method_config = json.dumps({"feature_arch": "convnet3", "feature_recipe": {"epochs": 30, "lr": 0.01}})
    protocol_config = json.dumps({"epochs": 300, "optimizer": {"name": "sgd", "lr": 0.01}, "batch_size": 256})
    values = {"method": "herding", "dataset": "digits", "ipc": 10, "protocol": "dc", "arch": "convnet3",
              "acc_last": 90.0, "acc_best": 91.0, "method_version": "2", "protocol_version": "1",
              "method_config": method_config, "protocol_config": protocol_config, "curve": "[[300, 90.0]]"}
    batch = [tuple(values.get(c, i if c in ("seed", "eval_seed") else None) for c in cols) for i in range(rows)]
    con.executemany(f"INSERT INTO results ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", batch)
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    for n in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.db"
            schema_1_store(path, n)
            t0 = time.perf_counter()
            with ResultStore(path) as store:
                seconds = time.perf_counter() - t0
                kept = len(store)
            print(json.dumps({"bench": "store_migration", "rows": n, "kept": kept, "seconds": round(seconds, 3),
                              "machine": platform.machine(), "python": platform.python_version()}), flush=True)
            assert kept == n


if __name__ == "__main__":
    main()
