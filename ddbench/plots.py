"""Figures: accuracy against IPC, accuracy against distillation time, and image grids of a distilled set.

One figure per (dataset, protocol card, version, settings) — the same split as the leaderboard tables, so a
figure never mixes protocol families — with one panel per evaluation network. File names end in the protocol
setting's key (`<dataset>-<protocol>-v<version>[-<settings hash>]`), the start of its tables' anchors on the
HTML page (`…-ipc<k>-<network>`, `leaderboard.render.table_id`), so a reader can match them.

What a point is (two levels, as the tables count): the evaluations of one distilled set are averaged first; the
point is the mean over sets and its whisker the 95 % interval over sets (Student t, n = number of sets). A cell
of one set is drawn with a hollow marker and its whisker is the spread (sample std) of that set's evaluations:
it says nothing about another set. The footnote of every figure states this, the range of n, and the device.

Every column of a table (method and variant) gets its own colour and marker in the figure (Okabe–Ito colours,
safe for colour-blind readers, cycled with markers so no two columns look alike); `random` is the grey
dashed reference. A panel whose points all sit at one IPC is a dot-and-whisker plot sorted by mean; a panel
over several IPCs joins a column's points by thin lines (no interpolated bands); the time plot draws points
only (each labelled with its IPC: a line across the time axis would join different IPCs).
Plots use matplotlib's object API on an Agg canvas (`matplotlib.figure.Figure`), never pyplot, so nothing
depends on a display or on global backend state. Sizes are fixed (no tight bounding box): a figure of k panels
is `min(k, 3)·PANEL_PX + LEGEND_PX` × `⌈k/3⌉·PANEL_PX + TITLE_PX + NOTE_PX`, so scripts and tests can rely on it.
"""
from __future__ import annotations

import hashlib
import math
import textwrap
from pathlib import Path
from typing import Callable, Iterable, Mapping

import pandas as pd

from . import stats
from .errors import ConfigError
from .leaderboard import BASELINE, METRICS, arch_order, cell_summary, column_labels, method_order, variant_summary
from .leaderboard import REFERENCE as REFERENCE_KIND  # the whole split's method kind (REFERENCE here: a colour)
from .leaderboard.budget import distill_seconds
from .leaderboard.cards import method_kind

PANEL_IN = (5.0, 4.0)   # inches per panel (width, height)
LEGEND_IN = 2.4         # inches right of the panels for the legend
TITLE_IN = 0.8          # inches above the panels for the title (up to three lines)
NOTE_IN = 0.5           # inches below the panels for the footnote (interval, n, device)
DPI = 100               # -> 500 × 400 px per panel, + 240 px legend, + 80 px title, + 50 px footnote
TITLE_CHARS = 66        # characters per title line per panel column (medium font, 500 px)
MAX_COLS = 3
DODGE = 0.012           # decades between neighbouring columns' points at one IPC
# Okabe & Ito (2008), without yellow (too light on white); a column's style is (colour, marker) by its position
# in the figure, cycled so that two columns never share both.
OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*"]
REFERENCE = "#7f7f7f"   # random: grey, dashed, square


# ---------------------------------------------------------------------------------------------- helpers

def variant_styles(labels: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Column label -> (colour, marker), distinct for every label of one figure; `random` (any variant) grey."""
    out, i = {}, 0
    for label in sorted(dict.fromkeys(labels), key=method_order):
        if label.split(" ")[0] == BASELINE and not any(c == REFERENCE for c, _ in out.values()):
            out[label] = (REFERENCE, "s")
            continue
        out[label] = (OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)])
        i += 1
    return out


def set_level(records: list[Mapping], field: str) -> dict:
    """A point of one cell, counted as the tables count it (`leaderboard.tables.cell_summary`: evaluations
    averaged per set, then over sets; a deterministic method's evaluations are its units): the mean ± the 95 %
    half-width over those units; one set: ± the std of its evaluations."""
    s = cell_summary(records, field)
    half = stats.interval(s) if s.n >= 2 else s.eval_std
    return {"mean": s.mean, "half": half, "n_sets": s.n, "n_evals": s.evaluations or len(records)}


def _figure(n_panels: int):
    from matplotlib.figure import Figure

    cols = min(MAX_COLS, n_panels)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(PANEL_IN[0] * cols + LEGEND_IN, PANEL_IN[1] * rows + TITLE_IN + NOTE_IN), dpi=DPI,
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
    field = METRICS[metric][0]

    def facts(group: list[Mapping]) -> dict:
        devices = sorted({str(r.get("device") or (r.get("hardware") or {}).get("device") or "") for r in group})
        return {**set_level(group, field), **_family_facts(group), "devices": "; ".join(d for d in devices if d),
                **(extra(group) if extra else {})}

    df = variant_summary(records, extra=facts)
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


def _footnote(part: pd.DataFrame, cols: int) -> str:
    """Under the panels: what a whisker is, the n of the points, the device(s)."""
    lo, hi = int(part["n_sets"].min()), int(part["n_sets"].max())
    n = f"{lo}" if lo == hi else f"{lo}–{hi}"
    devices = sorted({d for ds in part["devices"] for d in str(ds).split("; ") if d}) or ["not recorded"]
    text = (f"Point: mean over distilled sets (evaluations of a set averaged first); whisker: 95\u00a0% interval over "
            f"sets (Student t), n = {n} set{'' if hi == 1 else 's'} per point. Hollow marker: 1 set, whisker = std "
            f"of its evaluations. Device: {'; '.join(devices)}.")
    return textwrap.fill(text, int(TITLE_CHARS * cols * 1.25))


def _mark(ax, x, y, half, one_set: bool, colour: str, marker: str, label: str | None, horizontal=False,
          zorder=3) -> None:
    """One point with its whisker; hollow when it stands for a single set."""
    face = "white" if one_set else colour
    err = None if half is None or (isinstance(half, float) and math.isnan(half)) else half
    kw = {"xerr": err} if horizontal else {"yerr": err}
    ax.errorbar([x], [y], **kw, fmt=marker, color=colour, markerfacecolor=face, markeredgecolor=colour,
                markersize=7, capsize=3, elinewidth=1.2, label=label, zorder=zorder)


def _family(df: pd.DataFrame) -> str:
    from .leaderboard.render import FAMILIES

    return FAMILIES.get(df["family"].iloc[0], "protocol family not recorded") if "family" in df else ""


def _figures(df: pd.DataFrame, output, what: str, draw: Callable,
             dot_whisker: bool = False) -> list[tuple[Path, tuple[int, int]]]:
    """One figure per FIGURE_KEYS value, one panel per network; `draw(ax, panel, styles)` draws a panel
    (`dot_whisker`: a one-IPC panel puts accuracy on x). The whole split (its own protocol settings) is no
    figure of its own: a dotted line in the figures of its dataset and protocol card."""
    from matplotlib.lines import Line2D

    written = []
    whole = df["method"].map(method_kind) == REFERENCE_KIND  # the whole split: a line in its dataset's figures
    refs, df = df[whole], df[~whole]
    for key in _figure_keys(df):
        part = _select(df, FIGURE_KEYS, key)
        ref = _select(refs, FIGURE_KEYS[:3], key[:3])
        archs = sorted(part["arch"].unique(), key=arch_order)
        styles = variant_styles(part["label"])
        fig, axes = _figure(len(archs))
        for ax, arch in zip(axes, archs):
            draw(ax, part[part["arch"] == arch], styles)
            _whole_lines(ax, ref[ref["arch"] == arch],
                         vertical=dot_whisker and part[part["arch"] == arch]["ipc"].nunique() == 1)
            ax.set_title(f"evaluated on {arch}", fontsize="medium")
            ax.grid(alpha=0.3)
        handles = [Line2D([], [], color=c, marker=m, markersize=7, linestyle="none",
                          label=textwrap.fill(lb + (" (reference)" if c == REFERENCE else ""), 30))
                   for lb, (c, m) in styles.items()]
        handles += [Line2D([], [], color=WHOLE_COLOUR, linestyle=":", linewidth=1.5,
                           label=textwrap.fill(f"{lb} (whole training split; IPC does not apply)", 30))
                    for lb in sorted(ref["label"].unique())]
        if (part["n_sets"] == 1).any():
            handles.append(Line2D([], [], color="#444", marker="o", markerfacecolor="white", linestyle="none",
                                  label="hollow: 1 set\n(whisker: std of its\nevaluations)"))
        fig.legend(handles=handles, loc="outside right upper", fontsize="small", title="column",
                   title_fontsize="small")
        cols = min(MAX_COLS, len(archs))
        panels_w = cols * PANEL_IN[0] / (cols * PANEL_IN[0] + LEGEND_IN)  # centred over the panels, not the legend
        fig.suptitle(_suptitle(key, _family(part), what, cols), fontsize="medium", x=panels_w / 2)
        fig.supxlabel(_footnote(part, cols), fontsize="x-small", x=panels_w / 2)
        path = figure_path(output, key)
        written.append((path, _save(fig, path)))
    return written


WHOLE_COLOUR = "#000000"


def _whole_lines(ax, ref: pd.DataFrame, vertical: bool) -> None:
    """The whole split's mean accuracy as a dotted line across the panel (vertical on a dot-and-whisker panel,
    whose accuracy axis is x)."""
    for r in ref.itertuples(index=False):
        (ax.axvline if vertical else ax.axhline)(r.mean, color=WHOLE_COLOUR, linestyle=":", linewidth=1.5, zorder=0)


def _labels_in_order(panel: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = panel[["label", "method"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted(pairs, key=lambda lm: method_order(lm[0]))


def _family_facts(group: list[Mapping]) -> dict:
    return {"family": "/".join(sorted({(r.get("protocol_config") or {}).get("family") or "" for r in group}))}


def axis_label(metric: str) -> str:
    return {"last": "test accuracy (%) after the last epoch", "best": "best test accuracy (%) over the epochs"}[metric]


# ---------------------------------------------------------------------------------------------- accuracy vs IPC

def plot_ipc(records: Iterable[Mapping], output: str | Path, metric: str = "last") -> list[tuple[Path, tuple[int, int]]]:
    """Per (dataset, protocol): accuracy against IPC, a column per colour and marker; a panel at one IPC is a
    dot-and-whisker plot sorted by mean. [(file, (w, h))]."""
    df = _summary_frame(records, metric)

    def draw(ax, panel, styles):
        if panel["ipc"].nunique() == 1:
            _dot_whisker(ax, panel, styles, metric)
            return
        labels = _labels_in_order(panel)
        for i, (label, method) in enumerate(labels):
            colour, marker = styles[label]
            line = panel[panel["label"] == label].sort_values("ipc")
            # a small sideways dodge per column (in log units) so points at one IPC do not hide each other
            xs = [x * 10 ** (DODGE * (i - (len(labels) - 1) / 2)) for x in line["ipc"]]
            ax.plot(xs, line["mean"], color=colour, linewidth=0.9, alpha=0.6,
                    linestyle="--" if colour == REFERENCE else "-", zorder=1)
            for x, y, h, n in zip(xs, line["mean"], line["half"], line["n_sets"]):
                _mark(ax, x, y, h, n == 1, colour, marker, None)
        ipcs = sorted(panel["ipc"].unique())
        ax.set_xscale("log")  # IPC grids are geometric (1, 10, 50, 100)
        ax.set_xticks(ipcs, [str(i) for i in ipcs])
        ax.minorticks_off()
        ax.set(xlabel="images per class (IPC, log scale)", ylabel=axis_label(metric))

    return _figures(df, output, "accuracy vs IPC", draw, dot_whisker=True)


def _dot_whisker(ax, panel: pd.DataFrame, styles, metric: str) -> None:
    """One IPC: a row per column, sorted by mean (best on top), the n of sets written beside each whisker."""
    rows = panel.sort_values("mean")
    for y, r in enumerate(rows.itertuples(index=False)):
        colour, marker = styles[r.label]
        _mark(ax, r.mean, y, r.half, r.n_sets == 1, colour, marker, None, horizontal=True)
        ax.annotate(f"{r.n_sets} set{'s' if r.n_sets != 1 else ''}", (r.mean, y), textcoords="offset points",
                    xytext=(0, 7), ha="center", fontsize="x-small", color="#333")
    ax.set_yticks(range(len(rows)), [textwrap.fill(lb, 22) for lb in rows["label"]], fontsize="small")
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set(xlabel=f"{axis_label(metric)} at IPC {int(panel['ipc'].iloc[0])}")


# ---------------------------------------------------------------------------------------------- accuracy vs time

def plot_time(records: Iterable[Mapping], output: str | Path, metric: str = "last") -> list[tuple[Path, tuple[int, int]]]:
    """Per (dataset, protocol): accuracy against distillation seconds (timings.prepare + timings.distill), a
    point per (column, IPC) labelled with its IPC; no lines (they would join IPCs across the time axis)."""
    df = _summary_frame(records, metric, extra=lambda group: {"seconds": distill_seconds(group)})
    df = df[df["seconds"].notna()].copy()
    if df.empty:
        raise ConfigError("no result has distillation timings (timings.distill); sets scored with "
                          "`ddbench evaluate` have none: plot --kind ipc instead")
    df["seconds"] = df["seconds"].astype(float).clip(lower=1e-3)  # a log axis drops 0 s (instant selection rules)

    def draw(ax, panel, styles):
        one_ipc = panel["ipc"].nunique() == 1  # then the axis label names it, not every point
        for label, method in _labels_in_order(panel):
            colour, marker = styles[label]
            for r in panel[panel["label"] == label].itertuples(index=False):
                _mark(ax, r.seconds, r.mean, r.half, r.n_sets == 1, colour, marker, None)
                if not one_ipc:
                    ax.annotate(f"IPC {r.ipc}", (r.seconds, r.mean), textcoords="offset points", xytext=(5, 4),
                                fontsize="x-small")
        ax.set_xscale("log")  # costs span orders of magnitude (selection: seconds, diffusion: hours)
        at = f", all at IPC {int(panel['ipc'].iloc[0])}" if one_ipc else ""
        ax.set(xlabel=f"distillation time (s, log scale): prepare + distill{at}", ylabel=axis_label(metric))

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
