"""Training throughput of the hard-label protocol step, and its speed-up over a faithful re-creation of the
reference loop on the same machine.

ddbench's step (`ddbench.engine.train.train_classifier` as `protocols/hard.py` calls it): the distilled set lives on
the device as uint8; RRC + flip + jitter + lighting + CutMix run batched on the device; bf16 autocast and
channels_last on CUDA; no host sync per step. The reference (IDC / Minimax `train.py` + `data.py`, DC
`utils.py:evaluate_synset`): a DataLoader of in-memory PIL images with per-image torchvision transforms
(Resize + CenterCrop + ToTensor + RRC + flip + IDC ColorJitter + Lighting + Normalize) in worker processes,
numpy CutMix, fp32, and `loss.item()` / accuracy read every step.

    python benchmarks/train_throughput.py --device cuda                  # idc at 224 + dc at 32, full batches
    python benchmarks/train_throughput.py --device cpu --steps 3 --batch-size 8 --archs convnet6

Prints a table and one JSON line per configuration: samples/s of both loops and their ratio. Random weights
and images: speed does not depend on their values. Not a test: timings belong here, never in tests/.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddbench.engine.augment import (IDCAugment, LIGHTING_EIGVAL, LIGHTING_EIGVEC, Normalize,  # noqa: E402
                             resize_center_crop, to_float, to_uint8)
from ddbench.data.spec import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from ddbench.nets.build import build_net  # noqa: E402
from ddbench.engine.train import CutMixCE, train_classifier  # noqa: E402

IDC_ARCHS = ("convnet6", "resnetap10", "resnet18")

# ---------------------------------------------------------------------------------------------------------
# The reference loop, re-created (per-image transforms in DataLoader workers, fp32, a host sync per step)
# ---------------------------------------------------------------------------------------------------------


class RefColorJitter:
    """IDC's ColorJitter on one C×H×W tensor: brightness / contrast / saturation lerps in a shuffled order."""

    def __init__(self, s: float = 0.4):
        self.s = s

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        gray = lambda t: (t * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)  # noqa: E731
        ops = [lambda t: t.lerp(torch.zeros_like(t), random.uniform(-self.s, self.s)),
               lambda t: t.lerp(gray(t).mean().expand_as(t), random.uniform(-self.s, self.s)),
               lambda t: t.lerp(gray(t).expand_as(t), random.uniform(-self.s, self.s))]
        random.shuffle(ops)
        for op in ops:
            img = op(img)
        return img


class RefLighting:
    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        alpha = torch.empty(3).normal_(0, 0.1)
        rgb = (torch.tensor(LIGHTING_EIGVEC) * alpha.view(1, 3) * torch.tensor(LIGHTING_EIGVAL).view(1, 3)).sum(1)
        return img + rgb.view(3, 1, 1)


class PILSet(Dataset):
    """`--load_memory`: decoded PIL images kept in memory, transforms applied per access."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def idc_reference_loader(images_u8: torch.Tensor, labels: torch.Tensor, size: int, batch: int, workers: int):
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images_u8]
    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.RandomResizedCrop(size, scale=(0.5, 1.0)),
                    T.RandomHorizontalFlip(), RefColorJitter(), RefLighting(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return DataLoader(PILSet(pil, labels.tolist(), tf), batch_size=batch, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0, drop_last=True)


def reference_steps(net, loader, steps: int, device, cutmix: bool) -> float:
    """Samples/s of `steps` reference training steps (after the loader's first batch, to skip worker start-up)."""
    opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.9, weight_decay=5e-4)
    crit = torch.nn.CrossEntropyLoss()
    done, start, it = 0, None, iter(loader)
    for step in range(steps + 1):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        if step == 1:
            _sync(device)
            start = time.perf_counter()
        x, y = x.to(device), y.to(device)
        if cutmix:  # numpy λ and box, a permutation on the device, slicing with host integers
            lam = np.random.beta(1.0, 1.0)
            idx = torch.randperm(len(y), device=device)
            h, w = x.shape[-2:]
            ch, cw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
            cy, cx = np.random.randint(h), np.random.randint(w)
            y1, y2 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
            x1, x2 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
            x[:, :, y1:y2, x1:x2] = x[idx, :, y1:y2, x1:x2]
            r = 1 - (y2 - y1) * (x2 - x1) / (h * w)
            out = net(x)
            loss = crit(out, y) * r + crit(out, y[idx]) * (1 - r)
        else:
            out = net(x)
            loss = crit(out, y)
        loss.item(), (out.argmax(1) == y).sum().item()  # the reference's per-step meters
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += len(y) if step >= 1 else 0
    _sync(device)
    return done / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------------------
# ddbench's loop
# ---------------------------------------------------------------------------------------------------------


def ddbench_steps(net, images, labels, steps: int, batch: int, device, augment, loss) -> float:
    """Samples/s of ddbench's loop over `steps` steps (one epoch of steps·batch images), after a warm-up epoch."""
    kw = dict(batch_size=batch, optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
              augment=augment, loss=loss, device=device, generator=torch.Generator().manual_seed(0))
    n = steps * batch
    train_classifier(net, images[:2 * batch], labels[:2 * batch], epochs=1, **kw)  # warm-up (cuDNN, allocator)
    _sync(device)
    start = time.perf_counter()
    train_classifier(net, images[:n], labels[:n], epochs=1, **kw)  # ends with one host read
    _sync(device)
    return n / (time.perf_counter() - start)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------------------


def bench_idc(arch: str, args) -> dict:
    batch = args.batch_size or 64
    n = batch * (args.steps + 1)  # the reference also loads one untimed first batch
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, args.source_size, args.source_size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    dev = torch.device(args.device)
    # the once-per-evaluation preprocessing (Resize + CenterCrop to 224 on the device) is not part of a step
    on_dev = torch.cat([to_uint8(resize_center_crop(to_float(images[i:i + 256].to(dev)), args.size))
                        for i in range(0, n, 256)])
    ours = ddbench_steps(build_net(arch, 10, 3, args.size), on_dev, labels, args.steps, batch, dev,
                         IDCAugment(args.size, IMAGENET_MEAN, IMAGENET_STD), CutMixCE())
    loader = idc_reference_loader(images, labels, args.size, batch, args.workers)
    ref = reference_steps(build_net(arch, 10, 3, args.size).to(dev), loader, args.steps, dev, cutmix=True)
    return {"protocol": "idc", "arch": arch, "size": args.size, "batch": batch, "ddbench_samples_s": ours,
            "reference_samples_s": ref}


def bench_dc(args) -> dict:
    batch = args.batch_size or 256
    n = batch * (args.steps + 1)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    dev = torch.device(args.device)
    norm = Normalize(IMAGENET_MEAN, IMAGENET_STD)
    ours = ddbench_steps(build_net("convnet3", 10, 3, 32), images.to(dev), labels, args.steps, batch, dev, norm, "ce")
    # DC: the normalised set as a TensorDataset on the device, DataLoader(shuffle, num_workers=0)
    loader = DataLoader(TensorDataset(norm(images).to(dev), labels.to(dev)), batch_size=batch, shuffle=True)
    ref = reference_steps(build_net("convnet3", 10, 3, 32).to(dev), loader, args.steps, dev, cutmix=False)
    return {"protocol": "dc", "arch": "convnet3", "size": 32, "batch": batch, "ddbench_samples_s": ours,
            "reference_samples_s": ref}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=None, help="default: the card's (idc 64, dc 256)")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per loop")
    p.add_argument("--archs", nargs="+", default=list(IDC_ARCHS), help="idc networks")
    p.add_argument("--protocols", nargs="+", default=["idc", "dc"], choices=["idc", "dc"])
    p.add_argument("--size", type=int, default=224, help="idc training resolution")
    p.add_argument("--source-size", type=int, default=256, help="side of the distilled images (diffusion: 256)")
    p.add_argument("--workers", type=int, default=4, help="reference DataLoader workers")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = [bench_idc(a, args) for a in args.archs] if "idc" in args.protocols else []
    rows += [bench_dc(args)] if "dc" in args.protocols else []
    name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}   steps: {args.steps}   reference workers: {args.workers}")
    print(f"{'protocol':8} {'arch':11} {'size':>4} {'batch':>5} {'ddbench/s':>10} {'reference/s':>11} {'ratio':>6}")
    for r in rows:
        r["ratio"] = r["ddbench_samples_s"] / r["reference_samples_s"]
        r["device"] = name
        print(f"{r['protocol']:8} {r['arch']:11} {r['size']:>4} {r['batch']:>5} {r['ddbench_samples_s']:>10.1f} "
              f"{r['reference_samples_s']:>11.1f} {r['ratio']:>6.2f}")
    for r in rows:
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}))


if __name__ == "__main__":
    main()
