"""Figures: accuracy against IPC, accuracy against distillation time, and image grids of a distilled set.

One figure per (dataset, protocol card, version, settings) — the same split as the leaderboard tables, so a
figure never mixes protocol families — with one panel per evaluation network. Every method keeps one colour
in every figure (`method_colour`), each line carries its 95 % confidence band (Student t over the cell's runs;
none for n = 1), `random` is drawn as the dashed grey reference line, and the legend sits outside the axes.
Plots use matplotlib's object API on an Agg canvas (`matplotlib.figure.Figure`), never pyplot, so nothing
depends on a display or on global backend state. Sizes are fixed (no tight bounding box): a figure of k panels
is `min(k, 3)·PANEL_PX + LEGEND_PX` × `⌈k/3⌉·PANEL_PX + TITLE_PX`, so scripts and tests can rely on it.
"""
from __future__ import annotations

import hashlib
import math
import textwrap
import zlib
from pathlib import Path
from typing import Callable, Iterable, Mapping

import pandas as pd

from . import stats
from .errors import ConfigError
from .leaderboard import BASELINE, METRICS, arch_order, column_labels, method_order, variant_summary

PANEL_IN = (5.0, 4.0)   # inches per panel (width, height)
LEGEND_IN = 2.4         # inches right of the panels for the legend
TITLE_IN = 0.8          # inches above the panels for the title (up to three lines)
DPI = 100               # -> 500 × 400 px per panel, + 240 px legend, + 80 px title
TITLE_CHARS = 66        # characters per title line per panel column (medium font, 500 px)
MAX_COLS = 3
# 20 distinct colours; a registered method's colour is its position in the sorted registry, so it is the same in
# every figure and every run. The reference line (random) is always grey.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
           "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1",
           "#636363", "#fd8d3c"]
REFERENCE = "#7f7f7f"


# ---------------------------------------------------------------------------------------------- helpers

def method_colour(method: str) -> str:
    """One colour per method across every figure: registered methods by registry position, others by a hash."""
    if method == BASELINE:
        return REFERENCE
    from .method import list_methods

    names = [m for m in sorted(list_methods()) if m != BASELINE]
    index = names.index(method) if method in names else len(names) + zlib.crc32(method.encode()) % len(PALETTE)
    return PALETTE[index % len(PALETTE)]


def _figure(n_panels: int):
    from matplotlib.figure import Figure

    cols = min(MAX_COLS, n_panels)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(PANEL_IN[0] * cols + LEGEND_IN, PANEL_IN[1] * rows + TITLE_IN), dpi=DPI,
                 layout="constrained")
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
    parts = [column_labels(g) for _, g in df.groupby(FIGURE_KEYS, dropna=False, sort=False)]
    return pd.concat(parts)


FIGURE_KEYS = ["dataset", "protocol", "protocol_version", "pvariant"]


def _is_missing(v) -> bool:
    return v is None or v != v


def _select(df: pd.DataFrame, keys: list[str], values: tuple) -> pd.DataFrame:
    mask = pd.Series(True, index=df.index)
    for col, value in zip(keys, values):
        mask &= df[col].isna() if _is_missing(value) else df[col] == value  # NaN: a missing version
    return df[mask]


def _figure_keys(df: pd.DataFrame) -> list[tuple]:
    keys = df[FIGURE_KEYS].drop_duplicates().itertuples(index=False, name=None)
    return sorted(keys, key=lambda k: (k[0], k[1], str(k[2]), k[3]))


def figure_path(output: str | Path, key: tuple) -> Path:
    """`accuracy.png` -> `accuracy-<dataset>-<protocol>[-v<version>][-<settings hash>].png`."""
    dataset, protocol, version, variant = key
    slug = f"{dataset}-{protocol}" + ("" if _is_missing(version) else f"-v{version}")
    if variant:
        slug += "-" + hashlib.sha256(variant.encode()).hexdigest()[:6]  # settings are too long for a file name
    output = Path(output)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in slug)
    return output.with_name(f"{output.stem}-{safe}{output.suffix or '.png'}")


def _suptitle(key: tuple, family: str, what: str, cols: int) -> str:
    """Fits above the panels: the protocol line, then the settings wrapped on at most two lines."""
    dataset, protocol, version, variant = key
    v = "" if _is_missing(version) else f" v{version}"
    width = TITLE_CHARS * cols
    first = textwrap.shorten(f"{dataset} · protocol {protocol}{v} · {family} · {what}", width, placeholder=" …")
    second = f"modified: {variant}" if variant else "the card's own settings"
    return first + "\n" + textwrap.fill(textwrap.shorten(second, 2 * width - 4, placeholder=" …"), width)


def _band(ax, x, mean, std, n, colour, band: bool = True) -> None:
    """The 95 % confidence interval of each point with n ≥ 2 (Student t over its runs): a band along a line
    whose x grows (IPC), error bars where x is not ordered (seconds) or for a single point."""
    half = [stats.interval(stats.Summary(m, s, int(k))) for m, s, k in zip(mean, std, n)]
    keep = [h is not None for h in half]
    if sum(keep) >= 1:
        xs = [a for a, k in zip(x, keep) if k]
        lo = [m - h for m, h, k in zip(mean, half, keep) if k]
        hi = [m + h for m, h, k in zip(mean, half, keep) if k]
        if len(xs) == 1 or not band:
            ax.errorbar(xs, [(a + b) / 2 for a, b in zip(lo, hi)], yerr=[(b - a) / 2 for a, b in zip(lo, hi)],
                        fmt="none", ecolor=colour, capsize=4, alpha=0.6)
        else:
            ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, linewidth=0)


def _draw_line(ax, line: pd.DataFrame, x: str, field: str, label: str, method: str, band: bool = True) -> None:
    colour = method_colour(method)
    reference = method == BASELINE
    wrapped = textwrap.fill(label + (" (reference)" if reference else ""), 30)
    ax.plot(line[x], line[f"{field}_mean"], color=colour, marker="s" if reference else "o", markersize=4,
            linestyle="--" if reference else "-", linewidth=2.0 if reference else 1.5, label=wrapped,
            zorder=1 if reference else 2)
    _band(ax, list(line[x]), list(line[f"{field}_mean"]), list(line[f"{field}_std"]), list(line["n"]), colour, band)


def _family(df: pd.DataFrame) -> str:
    from .leaderboard.render import FAMILIES

    return FAMILIES.get(df["family"].iloc[0], "protocol family not recorded") if "family" in df else ""


def _figures(df: pd.DataFrame, output, what: str, draw: Callable) -> list[tuple[Path, tuple[int, int]]]:
    """One figure per FIGURE_KEYS value, one panel per network; `draw(ax, panel)` draws a panel's lines."""
    written = []
    for key in _figure_keys(df):
        part = _select(df, FIGURE_KEYS, key)
        archs = sorted(part["arch"].unique(), key=arch_order)
        fig, axes = _figure(len(archs))
        for ax, arch in zip(axes, archs):
            draw(ax, part[part["arch"] == arch])
            ax.set_title(arch, fontsize="medium")
            ax.grid(alpha=0.3)
        handles: dict = {}
        for ax in axes[:len(archs)]:
            for h, lb in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lb, h)
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize="small",
                   title="method", title_fontsize="small")
        cols = min(MAX_COLS, len(archs))
        panels_w = cols * PANEL_IN[0] / (cols * PANEL_IN[0] + LEGEND_IN)  # centred over the panels, not the legend
        fig.suptitle(_suptitle(key, _family(part), what, cols), fontsize="medium", x=panels_w / 2)
        path = figure_path(output, key)
        written.append((path, _save(fig, path)))
    return written


def _labels_in_order(panel: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = panel[["label", "method"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted(pairs, key=lambda lm: method_order(lm[0]))


def _family_facts(group: list[Mapping]) -> dict:
    return {"family": "/".join(sorted({(r.get("protocol_config") or {}).get("family") or "" for r in group}))}


# ---------------------------------------------------------------------------------------------- accuracy vs IPC

def plot_ipc(records: Iterable[Mapping], output: str | Path, metric: str = "last") -> list[tuple[Path, tuple[int, int]]]:
    """Per (dataset, protocol): accuracy (mean, 95 % band) against IPC, a line per method; [(file, (w, h))]."""
    df = _summary_frame(records, metric, extra=_family_facts)
    field = METRICS[metric][0]

    def draw(ax, panel):
        for label, method in _labels_in_order(panel):
            _draw_line(ax, panel[panel["label"] == label].sort_values("ipc"), "ipc", field, label, method)
        ipcs = sorted(panel["ipc"].unique())
        ax.set_xscale("log")  # IPC grids are geometric (1, 10, 50, 100)
        ax.set_xticks(ipcs, [str(i) for i in ipcs])
        ax.minorticks_off()
        ax.set(xlabel="images per class", ylabel=f"{field} (%)")

    return _figures(df, output, "accuracy vs IPC", draw)


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


def plot_time(records: Iterable[Mapping], output: str | Path, metric: str = "last") -> list[tuple[Path, tuple[int, int]]]:
    """Per (dataset, protocol): accuracy (mean, 95 % band) against distillation seconds (timings.prepare +
    timings.distill), a line per method through its IPCs, each point labelled with its IPC."""
    df = _summary_frame(records, metric, extra=lambda group: {"seconds": distill_seconds(group),
                                                              **_family_facts(group)})
    field = METRICS[metric][0]
    df = df[df["seconds"].notna()].copy()
    if df.empty:
        raise ConfigError("no result has distillation timings (timings.distill); sets scored with "
                          "`ddbench evaluate` have none: plot --kind ipc instead")
    df["seconds"] = df["seconds"].astype(float).clip(lower=1e-3)  # a log axis drops 0 s (instant selection rules)

    def draw(ax, panel):
        for label, method in _labels_in_order(panel):
            line = panel[panel["label"] == label].sort_values("ipc")
            _draw_line(ax, line, "seconds", field, label, method, band=False)
            for x, y, ipc in zip(line["seconds"], line[f"{field}_mean"], line["ipc"]):
                ax.annotate(f"{ipc}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
        ax.set_xscale("log")  # costs span orders of magnitude (selection: seconds, diffusion: hours)
        ax.set(xlabel="distillation time (s): prepare + distill", ylabel=f"{field} (%)")

    return _figures(df, output, "accuracy vs time", draw)


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
