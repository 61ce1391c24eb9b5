"""How many images of a distilled set an independent classifier recognises as their class: the generator judge
of docs/generators.md (ConvNet-3 trained on the real training pool, cached) applied to saved sets.

For ACS the first and second halves of each class (curricula 0 and 1 at IPC 10) are reported apart, which is
how docs/acs.md measures what the adversarial guidance does to the class content of the guided curriculum.

    python benchmarks/judge_distilled_sets.py --dataset fashion runs/embedded/distilled/acs/fashion/ipc10-*
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddbench.data import get_dataset, load_split
from ddbench.distilled import DistilledSet
from ddbench.method import default_cache_dir
from ddbench.features import feature_network
from ddbench.teachers.classifier import predict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("sets", nargs="+", help="distilled-set folders (manifest.json inside)")
    args = p.parse_args()
    spec, cache = get_dataset(args.dataset), Path(default_cache_dir())
    train = load_split(spec, "train", cache_dir=cache / "data")
    judge = feature_network(spec, "cpu", cache, train)  # the generator judge = the dataset's feature network
    k = len(spec.classes)
    for folder in args.sets:
        dset = DistilledSet.load(Path(folder))
        hit = (predict(judge, dset.images, spec, "cpu").argmax(1) == dset.labels).float()
        by_class = torch.stack([hit[dset.labels == c] for c in range(k)])  # K×IPC, in file order per class
        half = by_class.shape[1] // 2
        print(f"{folder}: judge accuracy {100 * hit.mean():.1f} %  (first {half} per class "
              f"{100 * by_class[:, :half].mean():.1f} %, the rest {100 * by_class[:, half:].mean():.1f} %)")


if __name__ == "__main__":
    main()
