"""Leaderboards from result records: the table model with its statistics (`tables`), the budget beside each row
(`budget`), markdown / HTML / CSV pages (`render`), the reproduction page (`repro`) and distilled-set metric
tables (`sets`). The HTML page is `html` (a shell that takes plain data: header, glossary, `Section`s, figures),
fed by `render.table_sections` and the adapters in `pages`; method links come from `links`.

Imports run one way: budget, cards <- tables <- render <- pages, repro; html, links <- render; sets -> tables,
cards (`cards`: what the tables read from the method and protocol cards). This package imports `tables` only,
so `ddbench.plots` can import the package without a cycle.
"""
from .tables import (BASELINE, DASH, METRICS, REFERENCE, Row, Table, arch_order, build_tables, card_config,
                     card_hash, cell_summary, cells_of, column_labels, config_diff, dataset_name, load_reported,
                     method_order, printed, row_label, teacher_of, variant_summary)

__all__ = ["BASELINE", "DASH", "METRICS", "REFERENCE", "Row", "Table", "arch_order", "build_tables", "card_config",
           "card_hash", "cell_summary", "cells_of", "column_labels", "config_diff", "dataset_name", "load_reported",
           "method_order", "printed", "row_label", "teacher_of", "variant_summary"]
