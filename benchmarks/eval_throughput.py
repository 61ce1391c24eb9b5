"""Evaluation throughput of the multi-model trainer: K networks trained at once (`ddbench.engine.train_many`) against
one at a time, and against the reference loop of `benchmarks/train_throughput.py`.

For each configuration (protocol, network, IPC, K) the protocol's step (`dc`: ConvNet-3 at 32 px, batch 256,
no augmentation; `idc`: ConvNet-6 / ResNetAP-10 / ResNet-18 at 224 px, batch 64, RRC + flip + jitter +
lighting + CutMix) trains K models on a 10-class set of IPC·10 random images for `--epochs` epochs after one
warm-up epoch, and the test pass of the K models over `--test` images is timed apart.

    python benchmarks/eval_throughput.py --device cuda                    # K = 1, 8, 32, 100; IPC 10 and 50
    python benchmarks/eval_throughput.py --device cpu                     # tiny: a few seconds on 2 cores

One JSON line per configuration: models_at_once, samples_s (aggregate training samples/s over the K
models), train_s_per_epoch, models_s (full trainings per second at the card's epoch count: dc 300, idc by
IPC, from the timed epochs), test_s, and reference_samples_s (one model in the reference loop, same
machine). A K that does not fit in memory prints {"error": "out of memory"} and larger K are skipped.
Random weights and images: speed does not depend on their values. Not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddbench.engine.augment import IDCAugment, Normalize  # noqa: E402
from ddbench.data.spec import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from ddbench.nets.build import build_net  # noqa: E402
from ddbench.engine.train import CutMixCE  # noqa: E402
from ddbench.engine.train_many import evaluate_accuracies, train_classifiers  # noqa: E402
from train_throughput import idc_reference_loader, reference_steps  # noqa: E402

CONFIGS = {  # protocol -> (networks, side, batch, card epochs at IPC 10 / 50)
    "dc": (("convnet3",), 32, 256, {10: 300, 50: 300}),
    "idc": (("convnet6", "resnetap10", "resnet18"), 224, 64, {10: 2000, 50: 1500}),
}
TINY = {"protocols": ["dc"], "ks": [1, 2, 4], "ipcs": [2], "size": 16, "epochs": 1, "test": 64, "ref_steps": 2}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def train_k(arch, k, images, labels, side, batch, protocol, epochs, device):
    """Seconds of `epochs` epochs of K stacked models (after one untimed warm-up epoch)."""
    channels = images.shape[1]
    if protocol == "idc":
        augment, loss = IDCAugment(side, IMAGENET_MEAN, IMAGENET_STD), CutMixCE()
    else:
        augment, loss = Normalize(IMAGENET_MEAN[:channels], IMAGENET_STD[:channels]), "ce"
    kw = dict(batch_size=batch, optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
              augments=[augment] * k, loss=loss, device=device)

    def run(n_epochs):
        nets = [build_net(arch, 10, channels, side, generator=torch.Generator().manual_seed(s)) for s in range(k)]
        gens = [torch.Generator().manual_seed(100 + s) for s in range(k)]
        train_classifiers(nets, images, labels, epochs=n_epochs, generators=gens, **kw)
        return nets

    run(1)  # warm-up: allocator, cuDNN autotuning, vmap tracing
    _sync(device)
    start = time.perf_counter()
    nets = run(epochs)
    _sync(device)
    return time.perf_counter() - start, nets


def test_k(nets, test_x, test_y, device) -> float:
    from ddbench.engine.train_many import ModelStack

    model = ModelStack([n.to(device) for n in nets]) if len(nets) > 1 else nets[0].to(device)
    tf = Normalize(IMAGENET_MEAN[:test_x.shape[1]], IMAGENET_STD[:test_x.shape[1]])
    _sync(device)
    start = time.perf_counter()
    evaluate_accuracies(model, test_x, test_y, tf, 256, device)
    _sync(device)
    return time.perf_counter() - start


def reference(arch, images, labels, side, batch, protocol, steps, device, workers: int) -> float:
    """Samples/s of one model in the reference loop (DC: a TensorDataset on the device; IDC: PIL images with
    per-image transforms in DataLoader workers, CutMix)."""
    from torch.utils.data import DataLoader, TensorDataset

    if protocol == "idc":
        loader = idc_reference_loader(images.cpu(), labels.cpu(), side, batch, workers)
        return reference_steps(build_net(arch, 10, 3, side).to(device), loader, steps, device, cutmix=True)
    norm = Normalize(IMAGENET_MEAN[:images.shape[1]], IMAGENET_STD[:images.shape[1]])
    loader = DataLoader(TensorDataset(norm(images).to(device), labels.to(device)), batch_size=batch, shuffle=True)
    net = build_net(arch, 10, images.shape[1], side).to(device)
    return reference_steps(net, loader, steps, device, cutmix=protocol == "idc")


def bench(protocol, arch, ipc, ks, args, device) -> list[dict]:
    _, side, batch, card_epochs = CONFIGS[protocol]
    side = args.size or side
    n = ipc * 10
    batch = min(batch, n)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8).to(device)
    labels = torch.randint(0, 10, (n,), generator=g).to(device)
    test_x = torch.randint(0, 256, (args.test, 3, side, side), generator=g, dtype=torch.uint8).to(device)
    test_y = torch.randint(0, 10, (args.test,), generator=g).to(device)
    ref = reference(arch, images, labels, side, batch, protocol, args.ref_steps, device, args.workers)
    rows = []
    for k in ks:
        row = {"protocol": protocol, "arch": arch, "size": side, "ipc": ipc, "batch": batch, "models_at_once": k}
        try:
            seconds, nets = train_k(arch, k, images, labels, side, batch, protocol, args.epochs, device)
            test_s = test_k(nets, test_x, test_y, device)
        except torch.OutOfMemoryError:
            rows.append({**row, "error": "out of memory"})
            print(json.dumps(rows[-1]), flush=True)
            break
        per_epoch = seconds / args.epochs
        epochs = card_epochs.get(ipc, card_epochs[10])
        rows.append({**row, "samples_s": round(k * n * args.epochs / seconds, 1),
                     "train_s_per_epoch": round(per_epoch, 4), "models_s": round(k / (per_epoch * epochs), 5),
                     "test_s": round(test_s, 4), "test_images": args.test,
                     "reference_samples_s": round(ref, 1), "ratio_to_reference": round(k * n / per_epoch / ref, 2)})
        print(json.dumps(rows[-1]), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--protocols", nargs="+", default=None, choices=sorted(CONFIGS))
    p.add_argument("--archs", nargs="+", default=None, help="only these networks")
    p.add_argument("--ks", type=int, nargs="+", default=None, help="models at once (default 1 8 32 100)")
    p.add_argument("--ipcs", type=int, nargs="+", default=None, help="images per class (default 10 50)")
    p.add_argument("--epochs", type=int, default=None, help="timed epochs (default 3)")
    p.add_argument("--size", type=int, default=None, help="override the side (default: the protocol's)")
    p.add_argument("--test", type=int, default=None, help="test images (default 10000)")
    p.add_argument("--ref-steps", type=int, default=None, help="timed reference steps (default 20)")
    p.add_argument("--workers", type=int, default=4, help="reference DataLoader workers (idc)")
    p.add_argument("--write-costs", default=None, metavar="FILE",
                   help="also write the rows as a sweep price table (leaderboards/costs/<device>.json)")
    p.add_argument("--full", action="store_true", help="on CPU too: the GPU sizes instead of the tiny ones")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    tiny = device.type == "cpu" and not args.full
    defaults = TINY if tiny else {"protocols": ["dc", "idc"], "ks": [1, 8, 32, 100], "ipcs": [10, 50],
                                  "size": None, "epochs": 3, "test": 10000, "ref_steps": 20}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# device: {name}   {'tiny CPU configuration' if tiny else 'full configuration'}", flush=True)
    rows = []
    for protocol in args.protocols:
        for arch in [a for a in CONFIGS[protocol][0] if args.archs is None or a in args.archs]:
            for ipc in args.ipcs:
                rows += bench(protocol, arch, ipc, args.ks, args, device)
    if args.write_costs:
        write_costs(Path(args.write_costs), rows, name, argv)


def write_costs(path: Path, rows: list[dict], device: str, argv) -> None:
    """The price table `ddbench sweep --dry-run` reads (ddbench/sweep/price.py): measured rows only."""
    keep = ("protocol", "arch", "size", "ipc", "batch", "models_at_once", "samples_s")
    entries = [{**{k: r[k] for k in keep},
                "test_samples_s": round(r["models_at_once"] * r["test_images"] / r["test_s"], 1)}
               for r in rows if "samples_s" in r]
    command = "python benchmarks/eval_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = {"device": device, "date": time.strftime("%Y-%m-%d", time.gmtime()), "command": command,
             "torch": torch.__version__, "entries": entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1) + "\n")
    print(f"# wrote {len(entries)} entries to {path}", flush=True)


if __name__ == "__main__":
    main()
