"""Reproduction page (`ddbench leaderboard --reproduction`): every number a method card reports, next to what
was measured here under the same dataset, protocol card, IPC and network.

Only cells measured with the cards' own settings count (a `--set` override is a different experiment), in the
papers' metric by default (best test epoch). Each line: the paper and table it comes from, the reported mean,
the measured mean ± its 95 % interval over distilled sets (sets × evaluations), Δ = measured − reported with
its interval, and the verdict of an equivalence test against ± a margin (`ddbench.stats.reproduction`):
reproduced, gap, inconclusive, too few sets (< 3), not run. The page opens with a headline ("k of N paper
numbers measured here") and lists the methods whose cards report no paper numbers. Definitions:
docs/leaderboards.md.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

from .. import stats
from .cards import REPORTED_META, card_config, load_reported, with_label_keys
from .tables import DASH, METRICS, arch_order, cell_summary, cells_of, dataset_name, method_order, printed
from .html import Section, page
from .links import links_for
from .render import markdown_table

IMAGENET = ("woof", "nette", "idc", "imagenet100", "imagenet1k")


@dataclass
class Line:
    dataset: str
    protocol: str
    ipc: int
    arch: str
    method: str
    source: str                         # the paper and table the number comes from
    reported: tuple[float, float | None]
    measured: stats.Summary | None
    version: str | None                 # the measured method card version (None: not run)
    config_hash: str | None
    result: stats.Reproduction


def reported_pairs() -> set[tuple[str, str]]:
    """Every (dataset, protocol) that some method card reports numbers for."""
    from ..method import list_methods, method_card

    pairs = set()
    for name in list_methods():
        for dataset, entry in (method_card(name).get("reported") or {}).items():
            pairs |= {(dataset, k) for k, v in (entry or {}).items() if k not in REPORTED_META and isinstance(v, Mapping)}
    return pairs


def _own_settings(cell: dict) -> bool:
    """Measured with the cards' own settings (the label keys a card always names do not count as changes)."""
    return cell["pvariant"] == "" and cell["mvariant"] == with_label_keys("", cell["records"][0])


def reproduction_lines(records: Iterable[Mapping], metric: str = "best", reported: Mapping | None = None,
                       defaults=None, margin: float = stats.MARGIN) -> list[Line]:
    """One line per (reported cell × measured cell); a reported cell nobody measured gets one "not run" line.
    `reported`: as `load_reported` returns (default: every card's numbers); `defaults`: as in `build_tables`."""
    if metric not in METRICS:
        from ..errors import ConfigError

        raise ConfigError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    field = METRICS[metric][0]
    reported = load_reported(reported_pairs()) if reported is None else reported
    measured: dict[tuple, list] = {}
    for cell in cells_of(records, defaults or card_config):
        if _own_settings(cell):
            key = (cell["dataset"], cell["protocol"], cell["ipc"], cell["arch"], cell["method"])
            measured.setdefault(key, []).append((cell_summary(cell["records"], field), cell["method_version"],
                                                 cell["config_hash"]))
    lines = []
    for (dataset, protocol), methods in reported.items():
        for method, entry in methods.items():
            for (ipc, arch), (mean, std) in entry["cells"].items():
                found = measured.get((dataset, protocol, ipc, arch, method)) or [(None, None, None)]
                for summary, version, chash in found:
                    lines.append(Line(dataset, protocol, ipc, arch, method, entry.get("source", ""), (mean, std),
                                      summary, version, chash, stats.reproduction(summary, mean, margin)))
    return sorted(lines, key=lambda x: (x.dataset, x.protocol, method_order(x.method), x.ipc, arch_order(x.arch)))


def summaries(lines: list[Line]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for x in lines:
        out.setdefault(x.method, Counter())[x.result.verdict] += 1
    return dict(sorted(out.items(), key=lambda kv: method_order(kv[0])))


def summary_text(method: str, counts: Counter) -> str:
    shown = ", ".join(f"{counts[v]} {v}" for v in stats.VERDICTS if counts[v])
    return f"{method}: {shown} (of {sum(counts.values())} reported cells)"


def headline(lines: list[Line]) -> str:
    """"0 of 177 paper numbers measured here: all need ImageNet" (or the datasets the rest need)."""
    run = sum(x.measured is not None for x in lines)
    missing = sorted({x.dataset for x in lines if x.measured is None})
    why = "" if not missing else ": all need ImageNet" if run == 0 and all(d in IMAGENET for d in missing) else \
        f"; not run: {', '.join(dataset_name(d) for d in missing)}"
    return f"{run} of {len(lines)} paper numbers measured here{why}."


def without_numbers(lines: list[Line]) -> list[str]:
    """Registered methods whose cards report no paper numbers (the leaderboard's own and e.g. IGD's)."""
    from ..method import list_methods

    return sorted(set(list_methods()) - {x.method for x in lines}, key=method_order)


HEADER = ["dataset", "protocol", "IPC", "arch", "method", "source", "reported", "measured", "sets × evaluations",
          "Δ", "Δ interval", "verdict"]


def _texts(x: Line) -> list[str]:
    mean, std = x.reported
    rep = printed(mean) + ("" if std is None else f" (sd {printed(std)})")
    r, s = x.result, x.measured
    if s is None:
        got, shape = DASH, DASH
    else:
        ci = stats.interval(s)
        tag = f" v{x.version}" if x.version is not None else ""
        got = f"{s.mean:.2f}" + ("" if ci is None else f" ± {ci:.2f}") + tag
        shape = s.shape
    band = DASH if r.low is None else f"[{r.low:+.2f}, {r.high:+.2f}]"
    return [dataset_name(x.dataset), x.protocol, str(x.ipc), x.arch, x.method, x.source or DASH, rep, got, shape,
            DASH if r.delta is None else f"{r.delta:+.2f}", band, r.verdict]


def _notes(metric: str, margin: float) -> list[str]:
    field, meaning = METRICS[metric]
    return [f"Measured: {meaning}; the mean over distilled sets ± the half-width of its 95 % confidence interval "
            "over sets; only cells run with the cards' own settings (no --set overrides).",
            "Reported: the method card's `reported:` number (the paper's std, when printed, for reference only: "
            "the paper's mean is taken as a fixed number).",
            f"Verdict (an equivalence test, margin ± {margin:g} points): the 95 % interval of measured − reported "
            f"inside ± {margin:g}: reproduced; entirely outside: gap; across an edge: inconclusive (more sets "
            f"narrow it); fewer than {stats.MIN_VERDICT} sets: too few sets; nothing measured here: not run."]


def render_reproduction_markdown(lines: list[Line], metric: str, command: str, margin: float = stats.MARGIN) -> str:
    out = [f"<!-- generated by `{command}` from the results store; do not edit by hand -->", "",
           "# Reproduction status", "", f"**{headline(lines)}**", ""] + [f"{n}  " for n in _notes(metric, margin)]
    out += ["", "## Summary per method", ""] + [f"- {summary_text(m, c)}" for m, c in summaries(lines).items()]
    out += ["", "Methods without paper numbers: " + ", ".join(without_numbers(lines)) + ".", "", "## Cells", ""]
    out += markdown_table(HEADER, [_texts(x) for x in lines], right=0)
    return "\n".join(out) + "\n"


def render_reproduction_html(lines: list[Line], metric: str, command: str, margin: float = stats.MARGIN) -> str:
    """The reproduction page (`leaderboard.html.page`): the headline and notes in the header, the summary per
    method, then one table of cells whose sticky first column is the method, linked to its card and paper."""
    nan = float("nan")
    order = [4, 0, 1, 2, 3] + list(range(5, len(HEADER)))   # method first: the sticky column names the row
    sort = [[dataset_name(x.dataset), x.protocol, x.ipc, x.arch, x.method, x.source, x.reported[0],
             nan if x.measured is None else x.measured.mean, nan if x.measured is None else x.measured.n,
             nan if x.result.delta is None else x.result.delta, nan if x.result.low is None else x.result.low,
             x.result.verdict] for x in lines]
    cells = Section(id="cells", title="Cells: reported vs measured", head=[HEADER[i] for i in order],
                    rows=[[_texts(x)[i] for i in order] for x in lines],
                    sort_values=[[v[i] for i in order] for v in sort], links=links_for({x.method for x in lines}),
                    part="Reproduction status", row_ipcs=[x.ipc for x in lines],
                    row_datasets=[dataset_name(x.dataset) for x in lines])
    counts = summaries(lines)
    summary = Section(id="summary", title="Summary per method", head=["method", *stats.VERDICTS, "reported cells"],
                      rows=[[m] + [str(c[v]) for v in stats.VERDICTS] + [str(sum(c.values()))]
                            for m, c in counts.items()],
                      sort_values=[[m] + [c[v] for v in stats.VERDICTS] + [sum(c.values())]
                                   for m, c in counts.items()],
                      links=links_for(counts), part="Reproduction status")
    header = {"headline": headline(lines), "generated by": command,
              "without paper numbers": ", ".join(without_numbers(lines)) or DASH}
    glossary = dict(zip(("measured", "reported", "verdict"), _notes(metric, margin)))
    return page("ddbench reproduction status", header, glossary, [summary, cells],
                comment=f"generated by {command} from the results store; do not edit by hand")
