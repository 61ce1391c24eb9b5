"""fp32 against bf16 autocast in the evaluation protocols: do the accuracies agree?

The references (IDC / Minimax `train.py`, RDED `validation/main.py`, SRe2L / CUDD `train_FKD.py`) train in fp32;
ddbench's cards default to `precision: bf16` on CUDA (CPU always computes in fp32). This script scores one
distilled set (seeded `random`, IPC 10) under a hard and a soft card in both precisions, with ≥ 10 models
(evaluation seeds) per cell, and compares the means:

    python benchmarks/precision.py --dataset nette --imagenet-root /data/imagenet \
        --teacher imagenet-nette_resnet18.pth --models 10 --out runs/precision          # GPU: hours
    python benchmarks/precision.py --dataset digits --models 2 --device cpu --allow-cpu \
        --set epochs=2 --soft-set epochs=2 --soft-set teacher.recipe.epochs=1            # smoke run, minutes

Cells (default): `idc` with convnet6 (hard) and `rded` with resnet18_tv (soft) on ImageNet subsets; `dc` with
convnet3 and `rded` with convnet3_bn on embedded data. Prints one JSON line per (card, arch, precision): n,
mean, std and the 95 % t-interval of acc_last (and acc_best), seconds per model; then one line per card with
the Welch 95 % interval of mean(bf16) − mean(fp32) and the verdict: `agree` when that interval holds 0 (keep
bf16, docs/protocols.md#precision), else `differ` (default to fp32 and bump the card versions). Each precision
has its own results store under --out, so a killed run resumes cell by cell.

Not run on a GPU yet: docs/protocols.md says so until its numbers are there.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from scipy import stats as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddbench.config import parse_overrides  # noqa: E402
from ddbench.data import get_dataset  # noqa: E402
from ddbench.runner import RunRequest, resolve_device, run  # noqa: E402

CELLS = {"imagenet": [("idc", "convnet6"), ("rded", "resnet18_tv")],
         "embedded": [("dc", "convnet3"), ("rded", "convnet3_bn")]}
PRECISIONS = ("fp32", "bf16")


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, std, half-width of the 95 % t-interval); half-width 0 for a single value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0, 0.0
    std = statistics.stdev(values)
    return mean, std, float(st.t.ppf(0.975, len(values) - 1)) * std / len(values) ** 0.5


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """(mean(b) − mean(a), half-width of its Welch 95 % interval)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return statistics.fmean(b) - statistics.fmean(a), 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return statistics.fmean(b) - statistics.fmean(a), float(st.t.ppf(0.975, df)) * (va + vb) ** 0.5


def cell_records(args, protocol: str, arch: str, precision: str, overrides: dict) -> list[dict]:
    req = RunRequest(method="random", dataset=args.dataset, ipc=args.ipc, protocol=protocol, archs=[arch],
                     seeds=[0], eval_seeds=list(range(args.models)),
                     protocol_overrides={**overrides, "precision": precision},
                     out=Path(args.out) / f"{protocol}-{arch}-{precision}", device=args.device,
                     options={"set_metrics": "off",  # not the question here; saves a feature network per set
                              **{k: v for k, v in (("imagenet_root", args.imagenet_root), ("data_root", args.data_root),
                                                   ("teacher", args.teacher), ("cache_dir", args.cache_dir)) if v}})
    return run(req, log=lambda *_: None)


def summary(records: list[dict], protocol: str, arch: str, precision: str, device) -> dict:
    last = [r["acc_last"] for r in records]
    best = [r["acc_best"] for r in records]
    m, s, h = t_interval(last)
    mb, sb, hb = t_interval(best)
    seconds = statistics.fmean(r["timings"]["evaluate"] for r in records)
    return {"benchmark": "precision", "protocol": protocol, "arch": arch, "precision": precision, "n": len(last),
            "acc_last_mean": m, "acc_last_std": s, "acc_last_ci95": h, "acc_best_mean": mb, "acc_best_std": sb,
            "acc_best_ci95": hb, "seconds_per_model": seconds, "device": records[0]["device"] if records else str(device),
            "values_last": last}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="nette")
    p.add_argument("--imagenet-root", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--teacher", default=None, help="soft card's teacher weights (e.g. RDED's imagenet-nette_resnet18.pth)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--models", type=int, default=10, help="evaluation seeds per cell (the question needs >= 10)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--allow-cpu", action="store_true", help="smoke run on CPU (precision has no effect there)")
    p.add_argument("--set", action="append", default=[], help="hard-card override, e.g. epochs=2")
    p.add_argument("--soft-set", action="append", default=[], help="soft-card override, e.g. teacher.recipe.epochs=1")
    p.add_argument("--out", default="runs/precision")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.allow_cpu:
        p.error("bf16 autocast is CUDA-only: on CPU both precisions compute in fp32. Use --device cuda "
                "(or --allow-cpu for a smoke run)")
    spec = get_dataset(args.dataset, imagenet_root=args.imagenet_root, data_root=args.data_root)
    overrides = {"hard": parse_overrides(args.set), "soft": parse_overrides(args.soft_set)}
    for protocol, arch in CELLS["embedded" if spec.kind == "embedded" else "imagenet"]:
        over = overrides["soft" if protocol in ("rded", "fkd") else "hard"]
        rows = {}
        for precision in PRECISIONS:
            rows[precision] = summary(cell_records(args, protocol, arch, precision, over), protocol, arch,
                                      precision, device)
            print(json.dumps(rows[precision]), flush=True)
        diff, half = welch(rows["fp32"]["values_last"], rows["bf16"]["values_last"]) if args.models > 1 else (0.0, 0.0)
        print(json.dumps({"benchmark": "precision", "protocol": protocol, "arch": arch, "compare": "bf16 - fp32",
                          "acc_last_diff": diff, "diff_ci95": half, "n": args.models,
                          "verdict": "agree" if abs(diff) <= half else "differ"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
