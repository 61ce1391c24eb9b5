"""An ImageNet-format tree with every one of the 1000 wnids, and random weights of the real shapes: the
full-shape rehearsal of the diffusion methods where neither ImageNet nor the DiT / VAE weights exist.

    python benchmarks/imagenet_tree.py /tmp/rehearsal --train 3 --val 1      # tree + DiT-XL/2 + sd-vae-ft-mse
    python benchmarks/imagenet_tree.py /tmp/rehearsal --no-weights           # the tree only
    python benchmarks/imagenet_tree.py /tmp/rehearsal --check                # read it all back (one forward each)

Writes
  <out>/imagenet/train/<wnid>/<wnid>_<k>.JPEG and val/<wnid>/ILSVRC2012_val_<wnid>_<k>.JPEG for the 1000 wnids of
      ddbench/data/classes/imagenet1k.txt: sides drawn from 256–500 px (odd ones included, width ≠ height),
      class-coloured gradients with noise; the first image of train/n01440764 is greyscale (mode L) and the
      second CMYK, as a few real ILSVRC-2012 files are;
  <out>/DiT-XL-2-256x256.pt    a DiT-XL/2 (675 M parameters, random weights) as the released plain state dict;
  <out>/DiT-XL-2-256-diffusers a diffusers pipeline-style folder (transformer/ config.json + safetensors);
  <out>/sd-vae-ft-mse          an AutoencoderKL of the sd-vae-ft-mse configuration (random weights).
Random weights sample noise-like images: the rehearsal checks shapes, memory and time, never quality.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddbench.diffusion import DiT, dit_config  # noqa: E402
from ddbench.diffusion.load import diffusers_config, dit_to_diffusers  # noqa: E402
from ddbench.diffusion.vae import build_vae  # noqa: E402

WNIDS = Path(__file__).resolve().parent.parent / "ddbench" / "data" / "classes" / "imagenet1k.txt"


def image(rng: np.random.Generator, k: int, w: int, h: int) -> Image.Image:
    """A class-coloured diagonal gradient with noise, drawn at 1/8 of the size and resized (fast; JPEG-
    compressible, not constant)."""
    base = np.array([(k * 37) % 256, (k * 91) % 256, (k * 53) % 256], dtype=np.float32)
    hs, ws = h // 8 + 1, w // 8 + 1
    ramp = (np.add.outer(np.arange(hs), np.arange(ws)) / (hs + ws) * 120.0)[..., None]
    pixels = np.clip(base + ramp + rng.normal(0, 20, (hs, ws, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").resize((w, h), Image.BICUBIC)


def write_tree(root: Path, n_train: int, n_val: int, seed: int = 0) -> dict:
    wnids = WNIDS.read_text().split()
    assert len(wnids) == 1000, f"{WNIDS} must list the 1000 ImageNet-1K wnids"
    rng = np.random.default_rng(seed)
    files = 0
    for k, wnid in enumerate(wnids):
        for split, n in (("train", n_train), ("val", n_val)):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(256, 501, 2))
                img = image(rng, k, w, h)
                if split == "train" and k == 0 and i == 0:
                    img = img.convert("L")  # a greyscale JPEG
                if split == "train" and k == 0 and i == 1:
                    img = img.convert("CMYK")  # a CMYK JPEG
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{wnid}_{i}.JPEG"
                img.save(folder / name, quality=90)
                files += 1
    return {"root": str(root), "classes": len(wnids), "files": files}


def write_weights(out: Path, seed: int = 0) -> dict:
    """DiT-XL/2 in the original and the diffusers formats, and the sd-vae-ft-mse-shaped AutoencoderKL."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = DiT(**dit_config("XL/2", input_size=32, num_classes=1000))
    sd = model.state_dict()
    torch.save(sd, out / "DiT-XL-2-256x256.pt")  # the released file: a plain state dict
    folder = out / "DiT-XL-2-256-diffusers" / "transformer"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"_class_name": "DiTTransformer2DModel", **diffusers_config(model.config), "norm_eps": 1e-6}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    converted = {k: v.contiguous() for k, v in dit_to_diffusers(sd, model.config["depth"]).items()}
    save_file(converted, str(folder / "diffusion_pytorch_model.safetensors"))
    del model, sd, converted
    build_vae("sd-vae-ft-mse", seed=seed, folder=out / "sd-vae-ft-mse")
    return {"dit": str(out / "DiT-XL-2-256x256.pt"), "dit_diffusers": str(folder.parent),
            "vae": str(out / "sd-vae-ft-mse")}


def check(out: Path, device: str = "cpu") -> dict:
    """Read everything back as the methods do: both DiT formats (one forward each, compared), the VAE (one
    decode), and the `nette` train pool (which holds the greyscale and the CMYK file)."""
    from ddbench.data import load_split
    from ddbench.diffusion import load_dit, load_vae

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(1, 4, 32, 32, generator=g).to(device), torch.tensor([500], device=device), torch.tensor([1])
    with torch.no_grad():
        a = load_dit(out / "DiT-XL-2-256x256.pt", device)(x, t, y.to(device))
        b = load_dit(out / "DiT-XL-2-256-diffusers", device)(x, t, y.to(device))
        image = load_vae(out / "sd-vae-ft-mse", device).decode(x[:, :4] * 0.1)
    spec = nonstandard_nette(out / "imagenet")
    pool = load_split(spec, "train", cache_dir=out / "cache")
    return {"dit_formats_max_abs_diff": float((a - b).abs().max()), "dit_output": list(a.shape),
            "vae_decode": list(image.shape), "nette_train": list(pool.images.shape),
            "nonstandard_subset": spec.nonstandard, "seconds": round(time.perf_counter() - t0, 1)}


def nonstandard_nette(root: Path):
    """`nette` read from this tree with the ILSVRC-2012 count gate open, as --allow-nonstandard-subset opens it
    for the runs: the tree holds a few images per class by design, and the spec says so (spec.nonstandard)."""
    from ddbench.data import get_dataset
    from ddbench.data.gates import ALLOW_ENV

    before = os.environ.get(ALLOW_ENV)
    os.environ[ALLOW_ENV] = "1"
    try:
        return get_dataset("nette", imagenet_root=str(root))
    finally:
        if before is None:
            del os.environ[ALLOW_ENV]
        else:
            os.environ[ALLOW_ENV] = before


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=3, help="training images per class")
    p.add_argument("--val", type=int, default=1, help="validation images per class")
    p.add_argument("--no-weights", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="only read an existing OUT back (see check())")
    p.add_argument("--device", default="cpu", help="device of --check")
    args = p.parse_args(argv)
    if args.check:
        result = check(args.out, args.device)
        print(json.dumps(result))
        return result
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {"tree": write_tree(args.out / "imagenet", args.train, args.val, args.seed)}
    result["tree"]["seconds"] = round(time.perf_counter() - t0, 1)
    if not args.no_weights:
        t0 = time.perf_counter()
        result["weights"] = write_weights(args.out, args.seed) | {"seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
