"""Quality of a self-trained generator *while it trains*: the EMA weights of its latest checkpoint, judged as
`ddbench generator quality` judges a finished generator (docs/generators.md, "Measuring a generator").

The learning rate is constant after warm-up and the EMA warm-up depends on the step only, so the checkpoint of
a longer run at step N holds exactly the weights an N-step run ends with: running this at several moments of
one long training measures quality against training length without training once per length.

    ddbench generator train --dataset digits --set train_steps=6000 --set batch_size=64 &
    python benchmarks/generator_checkpoint_quality.py --dataset digits --n-per-class 20   # now and then
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ddbench.data import get_dataset, load_split
from ddbench.diffusion.generator import Generator, generator_quality
from ddbench.diffusion.train import CHECKPOINT, build_model
from ddbench.method import default_cache_dir


def checkpoint_generator(folder: Path, spec) -> tuple[Generator, int]:
    ck = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True)
    model = build_model(ck["config"])
    model.load_state_dict(ck["ema"])
    return Generator(model.eval(), torch.arange(len(spec.classes)), spec.resolution), ck["step"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--folder", default=None, help="generator folder (default: the newest <cache>/generators/"
                                                   "<dataset>-* holding a checkpoint)")
    p.add_argument("--n-per-class", type=int, default=20)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    spec, cache = get_dataset(args.dataset), Path(default_cache_dir())
    if args.folder:
        folder = Path(args.folder)
    else:
        found = sorted((cache / "generators").glob(f"{spec.name}-*/{CHECKPOINT}"), key=lambda f: f.stat().st_mtime)
        if not found:
            raise SystemExit(f"no training checkpoint under {cache / 'generators'} for {spec.name}; pass --folder")
        folder = found[-1].parent
    gen, step = checkpoint_generator(folder, spec)
    train, test = load_split(spec, "train", cache_dir=cache / "data"), load_split(spec, "test", cache_dir=cache / "data")
    q = generator_quality(gen, spec, train, test, n_per_class=args.n_per_class, steps=args.steps, cfg=args.cfg_scale,
                          seed=args.seed, cache_dir=cache)
    print(json.dumps({"dataset": spec.name, "folder": str(folder), "train_step": step,
                      **{k: q[k] for k in ("acc", "fd", "fd_real", "judge_test_acc", "n_per_class", "cfg")},
                      "per_class": [round(v, 1) for v in q["per_class"]]}))


if __name__ == "__main__":
    main()
