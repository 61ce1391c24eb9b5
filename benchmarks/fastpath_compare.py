"""Does the fast path change anything that matters? The exact fp32 path against bf16, on the same seeds.

    python benchmarks/fastpath_compare.py --dataset fashion --ipc 10 --eval-seeds 0-9       # the docs' run
    python benchmarks/fastpath_compare.py --quick                                           # tiny generator
    python benchmarks/fastpath_compare.py --eval-seeds none                                 # pixels only
    python benchmarks/fastpath_compare.py --dataset digits --set protocol.epochs=100 --set protocol.eval_points=1

Distils `dit` twice with the same distillation seed — `autocast=false` (exact fp32) and `autocast=true` (bf16
DiT forward and VAE decode; on a CPU this is CPU bf16 autocast, labelled so) — then prints one JSON line of
per-image pixel statistics of the two sets (mean and max |Δ| in grey levels 0–255, against the difference of
two fp32 sets of different seeds as the scale of "a different draw"), and one JSON line per path with the
downstream accuracy under the protocol (`dc`: ConvNet-3) over the evaluation seeds (mean, std, 95 % CI), and
the paired difference. Runs go to --out/<path>/ (their own results stores). Not a test: it trains models.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddbench.cli.options import split_overrides  # noqa: E402
from ddbench.config import parse_int_list  # noqa: E402
from ddbench.distilled import DistilledSet  # noqa: E402
from ddbench.runner import RunRequest, device_name, resolve_device, run  # noqa: E402

PATHS = {"fp32": False, "bf16": True}  # the card's `autocast` value of each path


def seeds(text: str) -> list[int]:
    """"0-9" or "0,1,2" -> the list (`parse_int_list`, as --eval-seeds); "none" -> [] (pixel statistics only)."""
    return [] if text == "none" else parse_int_list(text)


def pixel_stats(a: torch.Tensor, b: torch.Tensor) -> dict:
    """uint8 N×C×H×W sets of the same noise: per-image mean |Δ| and max |Δ| (0–255), summarised."""
    d = (a.float() - b.float()).abs().flatten(1)
    per_mean, per_max = d.mean(1), d.amax(1)
    return {"images": len(a), "mean_abs_diff": round(per_mean.mean().item(), 4),
            "mean_abs_diff_worst_image": round(per_mean.max().item(), 4), "max_abs_diff": int(per_max.max()),
            "max_abs_diff_median_image": float(per_max.median()),
            "pixels_changed": round((d > 0).float().mean().item(), 4),
            "identical_images": int((per_max == 0).sum())}


def t95(n: int) -> float:
    """Two-sided 95 % Student t quantile for n − 1 degrees of freedom (n ≤ 30 tabulated, normal beyond)."""
    table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
             2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045]
    return table[n - 2] if 2 <= n <= 30 else 1.96


def summary(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = t95(n) * std / math.sqrt(n) if n > 1 else float("nan")
    return {"n": n, "mean": round(mean, 3), "std": round(std, 3),
            "ci95": [round(mean - half, 3), round(mean + half, 3)]}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="distillation seed (the same for both paths)")
    p.add_argument("--eval-seeds", default="0-9")
    p.add_argument("--protocol", default="dc")
    p.add_argument("--out", default="runs/fastpath-compare")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="tiny generator, 5 steps, 3 eval seeds, 20 epochs, one test")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="as ddbench run's --set (protocol.KEY for the protocol card), e.g. protocol.epochs=100")
    args = p.parse_args(argv)
    os.environ.setdefault("DDBENCH_SET_METRICS", "off")  # not part of this comparison
    method_over, proto_over = split_overrides(args.sets)
    eval_seeds = seeds(args.eval_seeds)
    if args.quick:
        method_over = {"generator": {"preset": "tiny"}, "steps": 5, **method_over}
        proto_over = {"epochs": 20, "eval_points": 1, **proto_over}
        eval_seeds = eval_seeds[:3]
    device = resolve_device(args.device)
    label = device_name(device) + ("" if device.type == "cuda" else " (CPU bf16 autocast)")
    if not eval_seeds:  # pixels only: distil the three sets, train nothing
        sets = {path: distil(args, {**method_over, "autocast": a}, args.seed) for path, a in PATHS.items()}
        line = {"what": "pixels", "device": label, "dataset": args.dataset, "ipc": args.ipc, "seed": args.seed,
                "method_overrides": method_over, "fp32_vs_bf16": pixel_stats(sets["fp32"], sets["bf16"]),
                "fp32_seed_vs_next_seed": pixel_stats(sets["fp32"], distil(args, {**method_over, "autocast": False},
                                                                           args.seed + 1))}
        print(json.dumps(line))
        return [line]
    lines, sets, accs = [], {}, {}
    for path, autocast in PATHS.items():
        t0 = time.perf_counter()
        req = RunRequest("dit", args.dataset, args.ipc, args.protocol, None, [args.seed], eval_seeds,
                         {**method_over, "autocast": autocast}, proto_over, Path(args.out) / path, args.device)
        records = run(req, log=lambda *_: None)
        sets[path] = DistilledSet.load(records[0]["distilled_path"]).images
        accs[path] = [r["acc_last"] for r in sorted(records, key=lambda r: r["eval_seed"])]
        lines.append({"what": "accuracy", "path": path, "device": label, "dataset": args.dataset, "ipc": args.ipc,
                      "protocol": args.protocol, "protocol_overrides": proto_over, "arch": records[0]["arch"],
                      "seed": args.seed,
                      "acc_last": summary(accs[path]), "values": accs[path],
                      "distilled_sha256": records[0]["distilled_sha256"],
                      "seconds": round(time.perf_counter() - t0, 1)})
    # scale of "a different draw": an fp32 set of the next seed (distilled and evaluated once)
    other = run(RunRequest("dit", args.dataset, args.ipc, args.protocol, None, [args.seed + 1], eval_seeds[:1],
                           {**method_over, "autocast": False}, proto_over, Path(args.out) / "fp32-next-seed",
                           args.device), log=lambda *_: None)
    diff = [b - a for a, b in zip(accs["fp32"], accs["bf16"])]
    lines.append({"what": "accuracy_difference", "bf16_minus_fp32": summary(diff), "paired_by": "eval seed"})
    lines.insert(0, {"what": "pixels", "device": label, "dataset": args.dataset, "ipc": args.ipc, "seed": args.seed,
                     "fp32_vs_bf16": pixel_stats(sets["fp32"], sets["bf16"]),
                     "fp32_seed_vs_next_seed": pixel_stats(sets["fp32"],
                                                           DistilledSet.load(other[0]["distilled_path"]).images)})
    for line in lines:
        print(json.dumps(line))
    return lines


def distil(args, overrides: dict, seed: int) -> torch.Tensor:
    """The `dit` set of (dataset, ipc, seed) under `overrides`, without the runner (no store, no evaluation)."""
    from ddbench.data import get_dataset, load_split
    from ddbench.method import Context, default_cache_dir, load_method

    spec = get_dataset(args.dataset)
    cache = default_cache_dir()
    method = load_method("dit", spec.name, overrides)
    ctx = Context(spec, resolve_device(args.device), cache, lambda: load_split(spec, "train", cache_dir=cache / "data"))
    method.prepare(ctx)
    return method.distill(ctx, args.ipc, seed).images


if __name__ == "__main__":
    main()
