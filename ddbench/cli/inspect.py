"""`ddbench inspect PATH --dataset D`: what a distilled set is (manifest summary) and its set metrics.

    ddbench inspect runs/distilled/mgd3/fashion/ipc10-seed0-<key> --dataset fashion
    ddbench inspect my_folder --dataset nette --space pixels --per-class --json metrics.json
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from .options import add_data_options, command, options_of


def manifest_summary(dset) -> dict:
    """The provenance a reader needs first: method, seed, images per class, content hash."""
    prov = dset.provenance or {}
    counts = dset.labels.bincount(minlength=dset.num_classes).tolist()
    return {"method": prov.get("method", prov.get("imported_from", "unknown")), "version": prov.get("version"),
            "seed": prov.get("seed"), "images": len(dset), "images_per_class": sorted(set(counts)),
            "shape": list(dset.images.shape[1:]), "soft_labels": dset.soft_labels is not None,
            "sha256": dset.sha256()}


def _fmt(v) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def print_inspection(summary: dict, metrics: dict, classes, per_class: bool, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..metrics import METRICS

    console = console or Console()
    console.print("[bold]distilled set[/bold]")
    for k, v in summary.items():  # plain lines, never wrapped: the sha256 stays copyable
        console.print(f"  {k:<17} {', '.join(map(str, v)) if isinstance(v, list) else v}", soft_wrap=True)
    table = Table(title=f"set metrics (feature space: {metrics['space']}; distances in units of the class's "
                        "median real pairwise distance)")
    table.add_column("metric")
    table.add_column("dir")
    table.add_column("overall", justify="right")
    table.add_column("meaning")
    for name, (direction, text) in METRICS.items():
        table.add_row(name, direction, _fmt(metrics["overall"][name]), text)
    table.add_row("mmd2_class_mean", "↓", _fmt(metrics["overall"]["mmd2_class_mean"]), "mean of the per-class MMD²")
    console.print(table)
    if per_class:
        pc = Table(title="per class")
        for col in ("class", "n", *METRICS):
            pc.add_column(col, justify="right")
        for name, row in zip(classes, metrics["per_class"]):
            pc.add_row(str(name), str(row["n_distilled"]), *(_fmt(row[m]) for m in METRICS))
        console.print(pc)


@command("inspect", "summarise a distilled set and compute its diversity / representativeness / coverage / MMD")
def cmd_inspect(p: argparse.ArgumentParser):
    p.add_argument("path", help="a ddbench distilled set (with manifest.json) or any ImageFolder")
    p.add_argument("--dataset", required=True, help="the dataset the set was distilled from")
    p.add_argument("--space", default="auto", choices=["auto", "convnet3", "resnetap10", "pixels"],
                   help="feature space (auto: ConvNet-3 for embedded data, ResNetAP-10 for ImageNet subsets, both "
                        "trained on the real training split and cached)")
    p.add_argument("--per-class", action="store_true", help="also print the metrics of every class")
    p.add_argument("--json", default=None, metavar="FILE", help="write summary and metrics as JSON")
    add_data_options(p)

    def handler(args):
        from ..data import get_dataset, load_split
        from ..distilled import DistilledSet
        from ..method import default_cache_dir
        from ..metrics import set_metrics
        from ..runner import resolve_device

        opts = options_of(args)
        spec = get_dataset(args.dataset, imagenet_root=opts.get("imagenet_root"), data_root=opts.get("data_root"))
        dset = DistilledSet.load(Path(args.path), classes=spec.classes, size=spec.resolution)
        cache = Path(opts.get("cache_dir") or default_cache_dir())
        real = load_split(spec, "train", cache_dir=cache / "data")
        metrics = set_metrics(dset, spec, real, resolve_device(args.device), cache, space=args.space)
        summary = manifest_summary(dset)
        print_inspection(summary, metrics, spec.classes, args.per_class)
        if args.json:
            Path(args.json).write_text(json.dumps({"summary": summary, "metrics": metrics}, indent=1, default=str))
    return handler
