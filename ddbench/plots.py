"""Figures: accuracy against IPC, accuracy against distillation time, and image grids of a distilled set.

Plots use matplotlib's object API on an Agg canvas (`matplotlib.figure.Figure`), never pyplot, so nothing
depends on a display or on global backend state. Sizes are fixed per panel (no tight bounding box), so a
figure's pixel size is `panels × PANEL_PX` and scripts/tests can rely on it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from .errors import ConfigError
from .leaderboard import METRICS, arch_order, column_labels, method_order, variant_summary

PANEL_IN = (5.0, 4.0)   # inches per panel (width, height)
DPI = 100               # -> 500 × 400 px per panel
MAX_COLS = 3


# ---------------------------------------------------------------------------------------------- helpers

def _figure(n_panels: int):
    from matplotlib.figure import Figure

    cols = min(MAX_COLS, n_panels)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(PANEL_IN[0] * cols, PANEL_IN[1] * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    return fig, axes


def _save(fig, output: str | Path) -> tuple[int, int]:
    output = Path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=DPI)
    except OSError as e:
        raise ConfigError(f"cannot write the figure to {output}: {e.strerror or e}; choose a writable --output") \
            from None
    w, h = fig.get_size_inches() * DPI
    return round(w), round(h)


def _summary_frame(records: Iterable[Mapping], metric: str, extra=None) -> pd.DataFrame:
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    df = variant_summary(records, extra=extra)
    if df.empty:
        raise ConfigError("no results to plot: the store holds no records for these filters "
                          "(check --out, --dataset and --protocol)")
    parts = [column_labels(g) for _, g in df.groupby(PANEL_KEYS[:-1], dropna=False, sort=False)]
    return pd.concat(parts)


PANEL_KEYS = ["dataset", "protocol", "protocol_version", "pvariant", "arch"]


def _panel_keys(df: pd.DataFrame) -> list[tuple]:
    keys = df[PANEL_KEYS].drop_duplicates().itertuples(index=False, name=None)
    return sorted(keys, key=lambda k: (k[0], k[1], str(k[2]), k[3], arch_order(k[4])))


def _panel_frame(df: pd.DataFrame, key: tuple) -> pd.DataFrame:
    mask = pd.Series(True, index=df.index)
    for col, value in zip(PANEL_KEYS, key):
        mask &= df[col].isna() if value is None or value != value else df[col] == value  # NaN: a missing version
    return df[mask]


def _title(key: tuple) -> str:
    dataset, protocol, pversion, pvariant, arch = key
    version = "" if pversion is None or pversion != pversion else f" v{pversion}"
    return f"{dataset} · {protocol}{version}{' (' + pvariant + ')' if pvariant else ''} · {arch}"


# ---------------------------------------------------------------------------------------------- accuracy vs IPC

def plot_ipc(records: Iterable[Mapping], output: str | Path, metric: str = "last") -> tuple[int, int]:
    """One panel per (dataset, protocol, arch): mean accuracy ± std against IPC, a line per method."""
    df = _summary_frame(records, metric)
    field = METRICS[metric][0]
    keys = _panel_keys(df)
    fig, axes = _figure(len(keys))
    for ax, key in zip(axes, keys):
        panel = _panel_frame(df, key)
        for label in sorted(panel["label"].unique(), key=method_order):
            line = panel[panel["label"] == label].sort_values("ipc")
            ax.errorbar(line["ipc"], line[f"{field}_mean"], yerr=line[f"{field}_std"], marker="o", capsize=3,
                        label=label)
        ipcs = sorted(panel["ipc"].unique())
        ax.set_xscale("log")  # IPC grids are geometric (1, 10, 50, 100)
        ax.set_xticks(ipcs, [str(i) for i in ipcs])
        ax.minorticks_off()
        ax.set(title=_title(key), xlabel="images per class", ylabel=f"{field} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, output)


# ---------------------------------------------------------------------------------------------- accuracy vs time

def distill_seconds(records: list[Mapping]) -> float | None:
    """Distillation cost of one cell: the one-off `prepare` (counted once: the largest over seeds, since it is
    cached after the first) + the mean `distill` time per distilled set. None when no record has timings."""
    per_seed: dict[int, Mapping] = {}
    for r in records:
        per_seed.setdefault(r["seed"], r.get("timings") or {})
    distill = [t["distill"] for t in per_seed.values() if "distill" in t]
    if not distill:
        return None
    prepare = max((t.get("prepare", 0.0) for t in per_seed.values()), default=0.0)
    return prepare + sum(distill) / len(distill)


def plot_time(records: Iterable[Mapping], output: str | Path, metric: str = "last") -> tuple[int, int]:
    """One panel per (dataset, protocol, arch): mean accuracy ± std against distillation seconds
    (timings.prepare + timings.distill), a line per method through its IPCs, each point labelled with its IPC."""
    df = _summary_frame(records, metric, extra=lambda group: {"seconds": distill_seconds(group)})
    field = METRICS[metric][0]
    df = df[df["seconds"].notna()].copy()
    if df.empty:
        raise ConfigError("no result has distillation timings (timings.distill); sets scored with "
                          "`ddbench evaluate` have none: plot --kind ipc instead")
    df["seconds"] = df["seconds"].astype(float).clip(lower=1e-3)  # a log axis drops 0 s (instant selection rules)
    keys = _panel_keys(df)
    fig, axes = _figure(len(keys))
    for ax, key in zip(axes, keys):
        panel = _panel_frame(df, key)
        for label in sorted(panel["label"].unique(), key=method_order):
            line = panel[panel["label"] == label].sort_values("ipc")
            ax.errorbar(line["seconds"], line[f"{field}_mean"], yerr=line[f"{field}_std"], marker="o", capsize=3,
                        label=label)
            for x, y, ipc in zip(line["seconds"], line[f"{field}_mean"], line["ipc"]):
                ax.annotate(f"{ipc}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
        ax.set_xscale("log")  # costs span orders of magnitude (selection: seconds, diffusion: hours)
        ax.set(title=_title(key), xlabel="distillation time (s): prepare + distill", ylabel=f"{field} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, output)


PLOTS = {"ipc": plot_ipc, "time": plot_time}


# ---------------------------------------------------------------------------------------------- image grid

GRID_PAD = 4          # px between cells and around the grid
GRID_LABEL_W = 160    # px of the class-name column (longer names are cut with "…")
GRID_TITLE_H = 28     # px of the title strip
MIN_CELL, MAX_CELL = 64, 128


def cell_size(side: int) -> int:
    """Side of one grid cell: small images are enlarged by an integer factor to at least MIN_CELL (crisp
    pixels, e.g. 8 -> 64, 28 -> 84), large ones shrunk to MAX_CELL."""
    if side < MIN_CELL:
        return side * math.ceil(MIN_CELL / side)
    return min(side, MAX_CELL)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable font (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def _fit(text: str, font, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def render_grid(dset, max_per_class: int = 10, cell: int | None = None, title: str | None = None):
    """A PIL image of `dset` (a DistilledSet): one row per class, labelled with the class name, showing the
    first `max_per_class` images of that class in stored order."""
    import torch
    from PIL import Image, ImageDraw

    if max_per_class < 1 or (cell is not None and cell < 1):
        raise ConfigError(f"--max-per-class and --cell must be at least 1, got {max_per_class} and {cell}")
    images = dset.images  # uint8 N×C×H×W
    side = int(max(images.shape[2], images.shape[3]))
    cell = cell or cell_size(side)
    counts = torch.bincount(dset.labels, minlength=dset.num_classes)
    cols = max(1, min(max_per_class, int(counts.max())))
    step = cell + GRID_PAD
    width, height = GRID_LABEL_W + cols * step + GRID_PAD, GRID_TITLE_H + dset.num_classes * step + GRID_PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(canvas), _font(14)
    title = title or _grid_title(dset)
    draw.text((GRID_PAD, GRID_TITLE_H // 2), _fit(title, font, width - 2 * GRID_PAD), fill="black", font=font,
              anchor="lm")
    resample = Image.NEAREST if cell >= side else Image.LANCZOS  # keep pixels crisp when enlarging
    for label, name in enumerate(dset.classes):
        top = GRID_TITLE_H + label * step
        draw.text((GRID_PAD, top + cell // 2), _fit(str(name), font, GRID_LABEL_W - 2 * GRID_PAD), fill="black",
                  font=font, anchor="lm")
        idx = (dset.labels == label).nonzero().flatten()[:cols].tolist()
        for col, i in enumerate(idx):
            arr = images[i].permute(1, 2, 0).numpy()  # H×W×C
            tile = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB")
            canvas.paste(tile.resize((cell, cell), resample), (GRID_LABEL_W + col * step, top))
    return canvas


def _grid_title(dset) -> str:
    p = dset.provenance or {}
    who = p.get("method") or p.get("imported_from") or "distilled set"
    seed = f", seed {p['seed']}" if "seed" in p else ""
    where = f" on {p['dataset']}" if "dataset" in p else ""
    return f"{who}{where}: {len(dset)} images, {dset.num_classes} classes, {dset.ipc} per class{seed}"


def save_grid(path: str | Path, output: str | Path, max_per_class: int = 10, cell: int | None = None) \
        -> tuple[int, int]:
    """Load the distilled set at `path` (ddbench set or any ImageFolder), write its grid as PNG; (w, h) px."""
    from .distilled import DistilledSet

    image = render_grid(DistilledSet.load(path), max_per_class, cell)
    output = Path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        image.save(output, format="PNG")
    except OSError as e:
        raise ConfigError(f"cannot write the grid to {output}: {e.strerror or e}; choose a writable --output") \
            from None
    return image.size
