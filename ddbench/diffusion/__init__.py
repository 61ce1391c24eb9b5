"""Diffusion core: DiT model and loading, the VAE, noise schedules, samplers with guidance hooks.

    from ddbench.diffusion import load_dit, load_vae, ddpm_sample, imagenet_label
    dit = load_dit("DiT-XL-2-256x256.pt", "cuda"); vae = load_vae("sd-vae-ft-mse", "cuda")
    y = torch.tensor([imagenet_label("n01440764")] * 8)
    z = ddpm_sample(dit, (8, 4, 32, 32), y, generator=torch.Generator().manual_seed(0))
    images = vae.decode(z)                      # 8×3×256×256 in [−1, 1]

See docs/diffusion.md.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ddbench.diffusion.dit import DiT, cfg_combine, dit_config
from ddbench.diffusion.hooks import GuidanceHook, StepState
from ddbench.diffusion.load import infer_dit_config, load_dit
from ddbench.diffusion.sampler import ddim_sample, ddpm_sample, randn
from ddbench.diffusion.schedule import Schedule, space_timesteps
from ddbench.diffusion.vae import VAE, from_uint8, load_vae, to_uint8
from ddbench.errors import DataError

__all__ = ["DiT", "dit_config", "cfg_combine", "load_dit", "infer_dit_config", "load_vae", "VAE", "to_uint8",
           "from_uint8", "ddpm_sample", "ddim_sample", "randn", "Schedule", "space_timesteps", "GuidanceHook",
           "StepState", "imagenet_label"]


@lru_cache(maxsize=1)
def _imagenet_wnids() -> dict[str, int]:
    path = Path(__file__).resolve().parent.parent / "data" / "classes" / "imagenet1k.txt"
    return {w: i for i, w in enumerate(path.read_text().split())}


def imagenet_label(wnid: str) -> int:
    """The DiT conditioning label of an ImageNet class: its position in the sorted 1000-wnid list."""
    index = _imagenet_wnids()
    if wnid not in index:
        import difflib

        close = difflib.get_close_matches(wnid, list(index), n=3)
        raise DataError(f"{wnid!r} is not an ImageNet-1K wnid" + (f"; did you mean {', '.join(close)}?" if close else
                                                                  " (expected e.g. 'n01440764')"))
    return index[wnid]
