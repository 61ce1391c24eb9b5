"""The image autoencoder of latent DiT: a diffusers AutoencoderKL (`sd-vae-ft-mse` / `-ema`) from a local
folder, with the DiT conventions: pixels in [−1, 1], latents scaled by 0.18215."""

from __future__ import annotations

from pathlib import Path

import torch

from ddbench.diffusion.fast import FP32, autocast_context
from ddbench.diffusion.load import resolve_weights_path
from ddbench.diffusion.sampler import randn
from ddbench.errors import ConfigError, DataError
from ddbench.safeload import load_tensors

LATENT_SCALE = 0.18215  # hard-coded in DiT / Minimax / MGD³ (the SD VAE's config scaling_factor)
VAE_ENV, VAE_FLAG, VAE_CARD_KEY = "DDBENCH_VAE", "--vae", "vae"


class VAE:
    """encode: N×3×H×W in [−1, 1] -> N×4×H/8×W/8 scaled latents; decode: the inverse."""

    def __init__(self, model, scale: float = LATENT_SCALE):
        self.model, self.scale = model.eval(), scale

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def encode(self, x: torch.Tensor, mode: str = "mean", generator: torch.Generator | None = None,
               batch_size: int | None = None) -> torch.Tensor:
        """mode "mean": the posterior mean (MGD³ mode discovery); "sample": mean + std·z with z drawn from
        `generator` (DiT / Minimax training), on the generator's device then moved."""
        if mode not in ("mean", "sample"):
            raise ConfigError(f"VAE encode mode {mode!r} is unknown; expected 'mean' or 'sample'")
        if mode == "sample" and generator is None:
            raise ConfigError("VAE encode mode 'sample' needs an explicit torch.Generator")
        out = []
        for chunk in _chunks(x, batch_size):
            dist = self.model.encode(chunk.to(self.device, self.dtype)).latent_dist
            z = dist.mean
            if mode == "sample":
                z = z + dist.std * randn(z.shape, generator, z.device, z.dtype)
            out.append(z.float() * self.scale)
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int | None = None, precision: str = FP32) -> torch.Tensor:
        """Scaled latents -> images in [−1, 1] (float32, not clamped: `to_uint8` clamps). `batch_size` bounds
        the decoder's activations (at 256 px its 128/256/512-channel maps dominate the memory); precision "bf16"
        runs the decoder under bf16 autocast (the fast path), "fp32" exactly."""
        out = []
        for c in _chunks(z, batch_size):
            with autocast_context(precision, self.device):
                out.append(self.model.decode(c.to(self.device, self.dtype) / self.scale).sample.float())
        return torch.cat(out)


# The AutoencoderKL configurations a VAE can be built from without weights (benchmarks, the full-shape
# rehearsal): "sd-vae-ft-mse" is stabilityai/sd-vae-ft-mse's config.json (83.7 M parameters, 8× down-sampling,
# 4 latent channels); "tiny" has the same layout at a fraction of the width, for CPU runs.
VAE_CONFIGS = {
    "sd-vae-ft-mse": dict(in_channels=3, out_channels=3, latent_channels=4, act_fn="silu", layers_per_block=2,
                          block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=256,
                          down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
    "tiny": dict(in_channels=3, out_channels=3, latent_channels=4, act_fn="silu", layers_per_block=1,
                 block_out_channels=(16, 32, 32, 32), norm_num_groups=8, sample_size=64,
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
}


def build_vae(name: str = "sd-vae-ft-mse", device="cpu", seed: int = 0, folder=None) -> VAE:
    """An AutoencoderKL of a named configuration with random weights (seeded); saved with save_pretrained to
    `folder` when given, so that `load_vae(folder)` reads it as it would read the released weights."""
    from diffusers import AutoencoderKL

    if name not in VAE_CONFIGS:
        raise ConfigError(f"unknown VAE configuration {name!r}; expected one of {', '.join(VAE_CONFIGS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderKL(**VAE_CONFIGS[name])
    if folder is not None:
        model.save_pretrained(str(folder))
    return VAE(model.to(device))


def _chunks(x: torch.Tensor, batch_size: int | None):
    return [x] if not batch_size else list(x.split(batch_size))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] images -> uint8 N×C×H×W, rounding as torchvision's save_image(normalize, value_range=(−1, 1))."""
    x = ((x.float().clamp(-1, 1) + 1) / 2).mul(255).add(0.5).clamp(0, 255)
    return x.to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [−1, 1] (DiT's Normalize(mean 0.5, std 0.5))."""
    return x.float().div(255).sub(0.5).div(0.5)


def load_vae(path=None, device="cpu", dtype=torch.float32) -> VAE:
    """An AutoencoderKL from a local diffusers folder (a VAE folder, or a pipeline folder with `vae/`);
    path None -> $DDBENCH_VAE."""
    path = resolve_weights_path(path, what="VAE (AutoencoderKL folder)", flag=VAE_FLAG, env=VAE_ENV,
                                card_key=VAE_CARD_KEY)
    folder = path / "vae" if (path / "vae" / "config.json").exists() else path
    if not (Path(folder) / "config.json").exists():
        raise DataError(f"{path} is not a diffusers AutoencoderKL folder (no config.json); give the folder "
                        "of e.g. stabilityai/sd-vae-ft-mse saved with save_pretrained")
    check_pickled_weights(Path(folder), "VAE weights")
    from diffusers import AutoencoderKL
    from diffusers.utils import is_accelerate_available

    # Low-memory loading (no random init before the weights) needs `accelerate`; diffusers' default asks for it
    # and, without it, prints a multi-line install advice at every load. Asked explicitly: the same weights,
    # loaded the fast way when accelerate is installed, quietly the plain way when it is not.
    low_memory = is_accelerate_available()
    try:
        model = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype,
                                              low_cpu_mem_usage=low_memory)
    except Exception as e:  # noqa: BLE001 - any failure means an unusable folder
        raise DataError(f"cannot load the AutoencoderKL in {folder}: {type(e).__name__}: {e}") from e
    return VAE(model.to(device))


def check_pickled_weights(folder: Path, what: str) -> None:
    """Refuse a folder whose weights are a torch pickle holding more than tensors, before diffusers reads it.

    Diffusers prefers `*.safetensors` and falls back to `diffusion_pytorch_model*.bin`, whose loading depends on
    the installed diffusers version; ddbench reads such a file weights-only first (memory-mapped, so a large
    file is not copied), so a planted pickle is a DataError naming it whatever diffusers would do."""
    if any(folder.glob("*.safetensors")):
        return
    for file in sorted(folder.glob("diffusion_pytorch_model*.bin")):
        try:
            load_tensors(file, what, mmap=True)
        except DataError as e:
            if "holds Python objects" in str(e):
                raise
            load_tensors(file, what)  # legacy (non-zip) files cannot be mapped; a bad file fails again
