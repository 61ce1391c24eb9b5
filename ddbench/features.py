"""Features of the real training images in the space of a network trained on them (cached).

Used by herding and k-center (and by the distilled-set metrics): the network is the same cached classifier
that `ddbench teacher train` produces, so one training serves every feature-space method.
"""
from __future__ import annotations

import os

import torch

from .safeload import load_tensors


@torch.no_grad()
def embed(net: torch.nn.Module, images_u8: torch.Tensor, spec, device, batch_size: int = 512) -> torch.Tensor:
    """Penultimate features (N×D, float32, CPU) of uint8 images, normalised with the dataset's mean/std."""
    net.eval().to(device)
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
    out = []
    for i in range(0, len(images_u8), batch_size):
        x = images_u8[i:i + batch_size].to(device).float().div_(255).sub_(mean).div_(std)
        out.append(net.features(x).float().cpu())
    return torch.cat(out)

def real_features(ctx, arch: str, recipe: dict) -> torch.Tensor:
    """Features of every image of ctx.train() (in its order) under a classifier trained on it."""
    from .teacher import teacher_for

    train = ctx.train()
    folder = ctx.cache_path("features", {"arch": arch, "recipe": recipe, "n": len(train.labels)})
    file = folder / "features.pt"
    if file.exists():
        return load_tensors(file, "cached features", fix="it is a cache file: delete it and run again")
    net = teacher_for(ctx.spec, arch, ctx.device, ctx.cache_dir, train, cfg=recipe or None, progress=ctx.progress)
    feats = embed(net, train.images, ctx.spec, ctx.device)
    tmp = file.with_suffix(f".tmp{os.getpid()}")
    torch.save(feats, tmp)
    os.replace(tmp, file)
    return feats
