"""Terminal output: the summary table at the end of a run and the registry listings."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .store import summary


def fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f} ± {std:.2f} (n={n})"


def print_summary(records: list[dict], console: Console | None = None) -> None:
    console = console or Console()
    if not records:
        console.print("no results")
        return
    table = Table(title="ddbench results (accuracy %, mean ± std over seeds)")
    for col in ("method", "dataset", "ipc", "protocol", "arch", "last epoch (honest)", "best epoch (paper-compatible)"):
        table.add_column(col)
    for row in summary(records):
        table.add_row(row["method"], row["dataset"], str(row["ipc"]), f"{row['protocol']} v{row['protocol_version']}",
                      row["arch"], fmt(row["acc_last_mean"], row["acc_last_std"], row["n"]),
                      fmt(row["acc_best_mean"], row["acc_best_std"], row["n"]))
    console.print(table)


def print_listing(what: str, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=what)
    if what == "methods":
        from ..method import list_methods, method_card

        for col in ("name", "version", "kind", "description"):
            table.add_column(col)
        for name in list_methods():
            card = method_card(name)
            table.add_row(name, str(card.get("version", "")), card.get("kind", ""), " ".join(str(card.get("description", "")).split())[:90])
    elif what == "datasets":
        from ..data import DATASETS, get_dataset
        from ..errors import DDBenchError

        for col in ("name", "classes", "resolution", "source"):
            table.add_column(col)
        for name in DATASETS.names():
            try:
                spec = get_dataset(name)
                table.add_row(name, str(len(spec.classes)), f"{spec.resolution} px", str(spec.root or "built in"))
            except DDBenchError as e:  # data not present here: say what is needed
                table.add_row(name, "", "", f"[dim]{str(e).split(':')[0]}[/dim]")
        table.add_row("imagefolder:<path>", "", "", "any <path>/train/<class>/ + <path>/test/<class>/ tree")
    elif what == "protocols":
        from ..protocol import list_protocols, load_protocol

        for col in ("name", "family", "version", "arch", "description"):
            table.add_column(col)
        for name in list_protocols():
            card = load_protocol(name).card
            table.add_row(name, card.get("family", ""), str(card.get("version", "")), str(card.get("arch", "")),
                          " ".join(str(card.get("description", "")).split())[:80])
    else:
        from ..nets.build import list_archs

        table.add_column("arch")
        for name in list_archs():
            table.add_row(name)
        table.add_row("timm:<name>  (any timm model, randomly initialised)")
    console.print(table)
