"""Leaderboards from result records: tables with their statistics (`tables`), their markdown / HTML / CSV
(`render`), budget tables (`budget`), reproduction status (`repro`) and distilled-set metric tables (`sets`).

The HTML page is `html` (a shell that takes plain data) fed by `pages` (tables -> page sections), which
render, repro and the CLI import lazily. Imports run one way: tables <- render <- budget, repro;
sets -> tables. This package imports `tables` only, so
`ddbench.plots` (which the budget tables use for timings) can import the package without a cycle.
"""
from .tables import (BASELINE, DASH, METRICS, Cell, Row, Table, arch_order, build_tables, card_config, card_hash,
                     cell_facts, column_labels, config_diff, load_reported, method_order, printed, teacher_of,
                     variant_summary)

__all__ = ["BASELINE", "DASH", "METRICS", "Cell", "Row", "Table", "arch_order", "build_tables", "card_config",
           "card_hash", "cell_facts", "column_labels", "config_diff", "load_reported", "method_order", "printed",
           "teacher_of", "variant_summary"]
