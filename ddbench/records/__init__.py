"""Result records: the SQLite store (`store`), the config hash of a cell (`cellhash`), the budget of a set
(`budget`) and the run summary table (`report`).
"""
