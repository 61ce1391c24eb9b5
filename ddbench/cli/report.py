"""Commands that publish and guard results: leaderboard, plot, grid, regress (importing registers them)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from .options import add_data_options, add_models_at_once, command, options_of
from ..errors import ConfigError


# ---------------------------------------------------------------------- reading results
def add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs", help="run directory holding results.db (default: runs)")
    p.add_argument("--jsonl", nargs="+", action="extend", default=[], metavar="FILE",
                   help="read records from JSONL exports instead of --out (e.g. --jsonl leaderboards/raw/*.jsonl)")
    p.add_argument("--dataset", nargs="+", default=None, help="only these datasets")
    p.add_argument("--protocol", nargs="+", default=None, help="only these protocol cards")
    p.add_argument("--metric", choices=["last", "best"], default=None,
                   help="last: accuracy after the last epoch (honest; the default of tables and plots); best: best "
                        "test epoch (paper-compatible; the default of --reproduction)")


def load_records(args) -> list[dict]:
    """Records matching --dataset/--protocol, from JSONL files (merged in a temporary store) or --out."""
    from ..records.store import ResultStore

    filters = {k: v for k, v in (("dataset", args.dataset), ("protocol", args.protocol)) if v}
    if args.jsonl:
        with tempfile.TemporaryDirectory(prefix="ddbench-lb-") as tmp, ResultStore(Path(tmp) / "results.db") as store:
            for file in args.jsonl:  # import validates every record; the same record twice is merged, not doubled
                result = store.import_jsonl(file)
                if result.conflicts:
                    raise ConfigError(f"{file}: {len(result.conflicts)} record(s) conflict with records of an earlier "
                                      f"--jsonl file (same key, other numbers); publish one of them")
            return store.query(**filters)
    db = Path(args.out) / "results.db"
    if not db.exists():
        raise ConfigError(f"no results store at {db}: run `ddbench run ... --out {args.out}` first, "
                          "point --out at a run directory, or read an export with --jsonl FILE")
    with ResultStore(db) as store:
        return store.query(**filters)


def write_text(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    try:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write {output}: {e.strerror or e}") from None
    print(f"wrote {output}", file=sys.stderr)


# ---------------------------------------------------------------------- commands
@command("leaderboard", "one table per setting (dataset × protocol × IPC × network), methods as rows")
def cmd_leaderboard(p: argparse.ArgumentParser):
    add_source_options(p)
    p.add_argument("--format", choices=["md", "csv", "html"], default="md")
    p.add_argument("--reported", action="store_true", help="add the papers' numbers from the method cards as rows")
    p.add_argument("--output", default=None, help="write to FILE instead of stdout")
    p.add_argument("--all-versions", action="store_true",
                   help="md/html: add an archive section with the results of superseded card versions")
    p.add_argument("--set-metrics", action="store_true",
                   help="md/html: also a table per dataset of the distilled sets' diversity / coverage / MMD² "
                        "(docs/metrics.md)")
    p.add_argument("--figures", nargs="+", default=[], metavar="PNG",
                   help="md/html: link these figures (`ddbench plot` output) from the page, relative to --output")
    p.add_argument("--reproduction", action="store_true",
                   help="md/html: instead of the tables, every number the method cards report vs the measured one: "
                        "Δ, its interval and an equivalence verdict (reproduced, gap, inconclusive, too few sets, "
                        "not run)")
    p.add_argument("--margin", type=float, default=None,
                   help="--reproduction: the equivalence margin in accuracy points (default: 1)")

    def handler(args):
        from ..leaderboard import build_tables, load_reported
        from ..leaderboard.render import RENDERERS
        from ..leaderboard.sets import render_set_metrics

        records = load_records(args)
        command = _leaderboard_command(args)
        if args.reproduction and args.format == "csv":
            raise ConfigError("--reproduction is written as md or html; use --format md or html")
        if args.margin is not None and not args.reproduction:
            raise ConfigError("--margin sets the equivalence margin of --reproduction; add --reproduction or drop it")
        if args.reproduction:
            write_text(_reproduction(records, args, command), args.output)
            return
        metric = args.metric or "last"
        pairs = {(r["dataset"], r["protocol"]) for r in records}
        if args.reported:  # datasets asked for but not run yet still show the papers' numbers
            pairs |= {(d, pr) for d in args.dataset or [] for pr in args.protocol or []}
        tables = build_tables(records, metric, load_reported(pairs) if args.reported else None)
        if not tables:
            raise ConfigError("no results match these filters; nothing to tabulate (check --out/--jsonl, "
                              "--dataset and --protocol)")
        if (args.set_metrics or args.figures) and args.format == "csv":
            raise ConfigError("--set-metrics and --figures are written as md or html; use --format md or html")
        figures = _figures(args, records)
        if args.format == "html":
            from ..leaderboard.pages import leaderboard_page

            write_text(leaderboard_page(tables, records, command, args.set_metrics, figures, args.all_versions),
                       args.output)
            return
        if args.format == "md":
            from ..leaderboard.render import render_markdown

            links = _figure_links(tables, figures, args.all_versions)
            text = render_markdown(tables, command=command, all_versions=args.all_versions, figures=links)
        else:
            text = RENDERERS[args.format](tables, command=command, all_versions=True)
        if args.set_metrics:
            text += "\n" + render_set_metrics(records)
        if figures:
            text += "\n## Figures\n\n" + "\n".join(f"- [{f.caption}]({f.src})" for f in figures) + "\n"
        write_text(text, args.output)
    return handler


def _as_glob(paths: list[str]) -> str:
    """"figures/*.png" when the paths are every PNG of one folder (as the shell expanded it), else the list."""
    folders = {str(Path(p).parent) for p in paths}
    if len(folders) == 1 and all(p.endswith(".png") for p in paths):
        (folder,) = folders
        if {str(p) for p in Path(folder).glob("*.png")} == {str(Path(p)) for p in paths}:
            return f"{folder}/*.png"
    return " ".join(paths)


def _figures(args, records) -> list:
    """--figures as page links (relative to --output); a missing file is an error, not a broken link."""
    from ..leaderboard.pages import figures_for

    missing = [f for f in args.figures if not Path(f).is_file()]
    if missing:
        raise ConfigError(f"--figures: no file {missing[0]}; write the figures first (`ddbench plot --output …`)")
    return figures_for(args.figures, args.output, {r["dataset"] for r in records})


def _figure_links(tables, figures: list, all_versions: bool) -> dict:
    """Table id -> its figures (captioned with their protocol setting; `figures` is updated in place)."""
    from ..leaderboard.pages import attach_figures
    from ..leaderboard.render import shown_tables, table_sections

    shown = shown_tables(tables, all_versions)
    sections = table_sections(shown, all_versions=True)
    figures[:] = attach_figures(list(zip(shown, sections)), figures)
    return {s.id: s.figures for s in sections}


def _reproduction(records, args, command: str) -> str:
    from .. import stats
    from ..leaderboard.repro import (render_reproduction_html, render_reproduction_markdown, reported_pairs,
                                     reproduction_lines)
    from ..leaderboard import load_reported

    pairs = {(d, pr) for d, pr in reported_pairs()
             if (not args.dataset or d in args.dataset) and (not args.protocol or pr in args.protocol)}
    metric = args.metric or "best"
    margin = stats.MARGIN if args.margin is None else args.margin
    lines = reproduction_lines(records, metric, load_reported(pairs), margin=margin)
    if not lines:
        raise ConfigError("no method card reports numbers for these --dataset/--protocol filters; nothing to compare")
    render = render_reproduction_html if args.format == "html" else render_reproduction_markdown
    return render(lines, metric, command, margin)


def _leaderboard_command(args) -> str:
    """The command line that regenerates a table, written into its header."""
    parts = ["ddbench leaderboard"]
    parts += [f"--jsonl {' '.join(args.jsonl)}"] if args.jsonl else ([f"--out {args.out}"] if args.out != "runs" else [])
    for flag, values in (("--dataset", args.dataset), ("--protocol", args.protocol)):
        if values:
            parts.append(f"{flag} {' '.join(values)}")
    if args.metric:
        parts.append(f"--metric {args.metric}")
    if args.reported:
        parts.append("--reported")
    for flag in ("all_versions", "set_metrics", "reproduction"):
        if getattr(args, flag, False):
            parts.append("--" + flag.replace("_", "-"))
    if getattr(args, "margin", None) is not None:
        parts.append(f"--margin {args.margin:g}")
    if args.format != "md":
        parts.append(f"--format {args.format}")
    if getattr(args, "figures", None):
        parts.append(f"--figures {_as_glob(args.figures)}")
    return " ".join(parts)


@command("plot", "accuracy against IPC, or against distillation time: one figure per dataset × protocol")
def cmd_plot(p: argparse.ArgumentParser):
    add_source_options(p)
    p.add_argument("--kind", choices=["ipc", "time"], default="ipc")
    p.add_argument("--output", required=True,
                   help="PNG name: one figure per dataset × protocol is written as NAME-<dataset>-<protocol>[-v<version>].png")

    def handler(args):
        from ..plots import PLOTS

        for path, (w, h) in PLOTS[args.kind](load_records(args), args.output, args.metric or "last"):
            print(f"wrote {path} ({w}×{h} px)")
    return handler


@command("grid", "PNG grid of a distilled set: one row per class")
def cmd_grid(p: argparse.ArgumentParser):
    p.add_argument("path", help="a distilled set folder (ddbench's, or any ImageFolder)")
    p.add_argument("--output", default=None, help="PNG file (default: <path>-grid.png next to the folder)")
    p.add_argument("--max-per-class", type=int, default=10)
    p.add_argument("--cell", type=int, default=None, help="cell side in px (default: images enlarged to ≥ 64)")

    def handler(args):
        from ..plots import save_grid

        path = Path(args.path)
        output = args.output or str(path.with_name(path.name + "-grid.png"))
        w, h = save_grid(path, output, args.max_per_class, args.cell)
        print(f"wrote {output} ({w}×{h} px)")
    return handler


@command("regress", "re-run the cells of a baseline file; exit 1 when a mean moved beyond its tolerance")
def cmd_regress(p: argparse.ArgumentParser):
    p.add_argument("--baseline", required=True, help="baseline JSON, e.g. leaderboards/baselines/cpu.json")
    p.add_argument("--tolerance-sigma", type=float, default=None,
                   help="K in max(floor, K·sqrt(σb²/nb + σ²/n)); default: the file's tolerance.sigma")
    p.add_argument("--update", action="store_true", help="write the fresh numbers into the baseline file")
    p.add_argument("--out", default=None, help="run directory (default: a fresh temporary one, kept and printed)")
    add_models_at_once(p)
    add_data_options(p)

    def handler(args):
        from rich.console import Console

        from ..progress import progress_bar
        from ..regress import load_baseline, render, report_json, run_baseline, updated_baseline, write_baseline

        baseline = load_baseline(args.baseline)
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ddbench-regress-"))
        console = Console()
        if not console.is_terminal:  # CI logs: wide enough that the table does not wrap
            console = Console(width=160)
        console.print(f"regress {args.baseline}: {len(baseline['cells'])} cell(s), run directory {out}")
        with progress_bar() as progress:
            results = run_baseline(baseline, out, args.device, options_of(args), args.tolerance_sigma, progress,
                                   log=progress.console.print)
        render(results, baseline.get("metric", "acc_last"), console, explain=not args.update)
        out.mkdir(parents=True, exist_ok=True)
        (out / "regress-report.json").write_text(json.dumps(report_json(results), indent=2) + "\n")
        if args.update:
            device = f" --device {args.device}" if args.device != "auto" else ""
            command_line = f"ddbench regress --baseline {args.baseline}{device} --update"
            write_baseline(args.baseline, updated_baseline(baseline, results, command_line))
            console.print(f"updated {args.baseline} with the fresh numbers of {len(results)} cell(s)")
            return
        failed = [r for r in results if r.verdict.failed]
        if failed:
            console.print(f"[bold red]{len(failed)} of {len(results)} cell(s) moved or are stale[/]; "
                          "see docs/regression.md")
            return 1
        console.print(f"[green]all {len(results)} cell(s) pass[/]"
                      + (f" ({sum(r.verdict.status == 'record' for r in results)} recorded only)"
                         if any(r.verdict.status == "record" for r in results) else ""))
    return handler
