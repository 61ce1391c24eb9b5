"""Sampling throughput of ddbench's DDPM loop, its FLOP-based utilisation, and its speed-up over a
faithful re-creation of the reference loop (facebookresearch/DiT `p_sample_loop` as driven by Minimax's
`sample.py`: batch 1, fp32, coefficient tables uploaded from numpy at every use, hence host syncs every step).

    python benchmarks/sampling.py --model XL/2 --input-size 32 --batch 64 --steps 50 --device cuda --bf16
    python benchmarks/sampling.py            # tiny CPU configuration (seconds)
    python benchmarks/sampling.py --igd      # + IGD's guided sampling cost per image relative to plain DiT
    python benchmarks/sampling.py --igd --igd-only --model XL/2 --depth 0 --input-size 32 --batch 1 --steps 50 \
        --device cuda --igd-vae              # DiT-XL/2 + an sd-vae-ft-mse-shaped decoder + ConvNet-6 at 256 px

Prints one JSON line: images/s for both loops, the speed-up, model GFLOPs per image, achieved TFLOP/s and
utilisation against the peak (`--peak-tflops`, or known for H100 / H200). Random weights: speed does not
depend on their values. Not a test: timings belong here, never in tests/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddbench.diffusion import DiT, ddpm_sample, dit_config, space_timesteps  # noqa: E402
from ddbench.diffusion.schedule import linear_betas  # noqa: E402

# dense peak TFLOP/s by device name and precision (NVIDIA data sheets: SXM; PCIe H100 separately)
PEAKS = {"H100 PCIe": {"bf16": 756.0, "fp32": 51.2}, "H100": {"bf16": 989.4, "fp32": 66.9},
         "H200": {"bf16": 989.4, "fp32": 66.9}}

# ---------------------------------------------------------------------------------------------------------
# The reference loop, re-created (numpy float64 tables; one table upload per coefficient use)
# ---------------------------------------------------------------------------------------------------------


class ReferenceDDPM:
    """The respaced Gaussian diffusion of the DiT code base, reduced to what `p_sample_loop` runs."""

    def __init__(self, steps: int):
        base_ac = np.cumprod(1.0 - linear_betas().numpy())
        self.timestep_map, betas, last = [], [], 1.0
        keep = set(space_timesteps(1000, str(steps)))
        for t, ac in enumerate(base_ac):
            if t in keep:
                betas.append(1 - ac / last)
                last = ac
                self.timestep_map.append(t)
        b = np.array(betas, dtype=np.float64)
        ac = np.cumprod(1.0 - b)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        self.n = len(b)
        self.log_betas = np.log(b)
        self.post_log_var = np.log(np.append(post_var[1], post_var[1:]))
        self.recip = np.sqrt(1.0 / ac)
        self.recipm1 = np.sqrt(1.0 / ac - 1)
        self.coef1 = b * np.sqrt(ac_prev) / (1.0 - ac)
        self.coef2 = (1.0 - ac_prev) * np.sqrt(1.0 - b) / (1.0 - ac)

    @staticmethod
    def _extract(arr, t, shape):
        res = torch.from_numpy(arr).to(device=t.device)[t].float()  # host -> device upload, every call
        while res.dim() < len(shape):
            res = res[..., None]
        return res.expand(shape)

    def p_sample(self, model, x, t, y, cfg_scale, generator):
        mapped = torch.tensor(self.timestep_map, device=t.device, dtype=t.dtype)[t]
        out = model.forward_with_cfg(x, mapped, y, cfg_scale)
        c = x.shape[1]
        eps, var_values = out[:, :c], out[:, c:]
        min_log = self._extract(self.post_log_var, t, x.shape)
        max_log = self._extract(self.log_betas, t, x.shape)
        frac = (var_values + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        x0 = self._extract(self.recip, t, x.shape) * x - self._extract(self.recipm1, t, x.shape) * eps
        mean = self._extract(self.coef1, t, x.shape) * x0 + self._extract(self.coef2, t, x.shape) * x
        noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device)
        nonzero = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
        return mean + nonzero * torch.exp(0.5 * log_var) * noise

    def sample(self, model, labels, cfg_scale, shape, generator, device):
        """As Minimax's sample.py: z for the batch, [z; z] with [y; null], conditional half kept."""
        n = len(labels)
        z = torch.randn(n, *shape, generator=generator, device=generator.device).to(device)
        x = torch.cat([z, z])
        y = torch.cat([torch.tensor(labels, device=device), torch.tensor([model.num_classes] * n, device=device)])
        for i in reversed(range(self.n)):
            t = torch.tensor([i] * x.shape[0], device=device)
            x = self.p_sample(model, x, t, y, cfg_scale, generator)
        return x.chunk(2)[0]


# ---------------------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------------------


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int) -> float:
    fn()  # warm-up (kernels, allocator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def flops_per_image(model, args, device) -> float:
    """Model FLOPs of one image: one forward of a CFG pair per step (FlopCounterMode counts matmuls/convs)."""
    x = torch.zeros(2, model.in_channels, args.input_size, args.input_size, device=device)
    t = torch.zeros(2, dtype=torch.long, device=device)
    y = torch.zeros(2, dtype=torch.long, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, y)
    return counter.get_total_flops() * args.steps


def peak_tflops(args, device) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAKS.items():  # "H100 PCIe" is checked before "H100"
        if key in name:
            return peaks["bf16" if args.bf16 else "fp32"]
    return None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="S/2", help="DiT size, e.g. XL/2 (default: a tiny S/2)")
    p.add_argument("--input-size", type=int, default=8, help="latent side (32 for 256×256 images)")
    p.add_argument("--depth", type=int, default=2, help="override depth (default 2 for the tiny run; 0 = size's)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for ddbench's loop (CUDA)")
    p.add_argument("--reference-images", type=int, default=2, help="images timed with the reference loop")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for the utilisation")
    p.add_argument("--igd", action="store_true", help="also print IGD's sampling cost relative to plain DiT")
    p.add_argument("--igd-only", action="store_true", help="only the IGD line (skips the reference loop)")
    p.add_argument("--igd-vae", action="store_true", help="IGD through a random sd-vae-ft-mse-shaped decoder")
    p.add_argument("--igd-checkpoints", type=int, default=4, help="surrogate checkpoints (the reference uses 4)")
    args = p.parse_args(argv)
    if args.igd or args.igd_only:
        print(json.dumps(igd_cost(args)))
        if args.igd_only:
            return {}
    device = torch.device(args.device)
    cfg = dit_config(args.model, input_size=args.input_size, num_classes=1000)
    if args.depth:
        cfg["depth"] = args.depth
    torch.manual_seed(0)
    model = DiT(**cfg).to(device).eval()
    shape = (model.in_channels, args.input_size, args.input_size)
    labels = torch.arange(args.batch) % 1000

    def ours():
        g = torch.Generator().manual_seed(0)
        ddpm_sample(model, (args.batch, *shape), labels, steps=args.steps, cfg_scale=args.cfg_scale,
                    generator=g, device=device, autocast=args.bf16)

    ref = ReferenceDDPM(args.steps)

    def reference():
        g = torch.Generator(device).manual_seed(0)  # the reference draws on the device (global RNG)
        with torch.no_grad():
            for k in range(args.reference_images):
                ref.sample(model, [k], args.cfg_scale, shape, g, device)

    t_ours = _timed(ours, device, args.repeats)
    t_ref = _timed(reference, device, 1)
    ips, ips_ref = args.batch / t_ours, args.reference_images / t_ref
    flops = flops_per_image(model, args, device)
    peak = peak_tflops(args, device)
    result = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  model=args.model, config=cfg, batch=args.batch, steps=args.steps, bf16=args.bf16,
                  images_per_s=round(ips, 3), reference_images_per_s=round(ips_ref, 3),
                  speedup=round(ips / ips_ref, 2), gflops_per_image=round(flops / 1e9, 3),
                  achieved_tflops=round(ips * flops / 1e12, 4),
                  utilisation=None if peak is None else round(ips * flops / 1e12 / peak, 4), peak_tflops=peak)
    print(json.dumps(result))
    return result


# ---------------------------------------------------------------------------------------------------------
# IGD: guided sampling cost per image relative to plain DiT sampling (same model, batch, steps)
# ---------------------------------------------------------------------------------------------------------


def igd_cost(args) -> dict:
    """Seconds per image of plain DDPM sampling and of IGD's (influence + deviation guidance on the reference's
    steps 30–45 of 50, rescaled), with random weights: a ConvNet surrogate (ConvNet-6 at 256 px with --igd-vae,
    else ConvNet-3 on the latent itself), `--igd-checkpoints` parameter sets and a memory of 64 latents."""
    from ddbench.methods.igd import InfluenceGuidance, guided_range
    from ddbench.nets import build_net

    device = torch.device(args.device)
    cfg = dit_config(args.model, input_size=args.input_size, num_classes=1000)
    if args.depth:
        cfg["depth"] = args.depth
    torch.manual_seed(0)
    model = DiT(**cfg).to(device).eval()
    shape = (model.in_channels, args.input_size, args.input_size)
    labels = torch.arange(args.batch) % 10
    if args.igd_vae:
        from diffusers.models import AutoencoderKL

        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            sample_size=args.input_size * 8).to(device).eval()
        decode = lambda z: vae.decode(z / 0.18215).sample  # noqa: E731
        net = build_net("convnet6", 10, 3, args.input_size * 8)
    else:
        decode = lambda z: z  # noqa: E731
        net = build_net("convnet3", 10, shape[0], args.input_size)
    net = net.to(device).eval()
    params = [{k: v.detach() + 0.01 * j for k, v in net.named_parameters()} for j in range(args.igd_checkpoints)]
    n_params = sum(v.numel() for v in params[0].values())
    real = torch.randn(args.batch, args.igd_checkpoints, n_params, device=device)
    memory = torch.randn(64, *shape, device=device)
    low, high = guided_range(30, 45, args.steps)

    def run(guided: bool):
        hooks = [InfluenceGuidance(net, params, real, labels.to(device), memory, decode, lambda x: x, k=5.0,
                                   gamma=120.0, low=low, high=high)] if guided else []
        ddpm_sample(model, (args.batch, *shape), labels, steps=args.steps, cfg_scale=args.cfg_scale,
                    generator=torch.Generator().manual_seed(0), device=device, hooks=hooks)

    t_plain, t_igd = _timed(lambda: run(False), device, args.repeats), _timed(lambda: run(True), device, args.repeats)
    return dict(benchmark="igd_sampling_cost", device=torch.cuda.get_device_name(device) if device.type == "cuda"
                else "cpu", model=args.model, config=cfg, batch=args.batch, steps=args.steps, guided_steps=high - low + 1,
                checkpoints=args.igd_checkpoints, vae=args.igd_vae, surrogate_params=n_params,
                plain_s_per_image=round(t_plain / args.batch, 4), igd_s_per_image=round(t_igd / args.batch, 4),
                cost_ratio=round(t_igd / t_plain, 2))


if __name__ == "__main__":
    main()
