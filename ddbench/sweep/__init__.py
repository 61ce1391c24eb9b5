"""Sweeps: a grid file expanded into cells, run on Ray (or in-process) with resume, and shown while it runs.

Imports run one way: view and expand -> grid; execute -> cells -> grid. The rooms:
  grid.py     the grid format, the cell dataclasses, --only filters
  expand.py   load_grid: a grid file expanded into a Plan (every name and override checked; nothing runs)
  cells.py    the worker side: one distillation or evaluation task
  execute.py  scheduling, Ray, resume from the store
  view.py     the live table, the plan and cost printouts
"""
