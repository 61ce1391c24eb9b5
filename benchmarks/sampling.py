"""Sampling throughput of ddbench's DDPM loop, its FLOP-based utilisation, and its speed-up over a
faithful re-creation of the reference loop (facebookresearch/DiT `p_sample_loop` as driven by Minimax's
`sample.py`: batch 1, fp32, coefficient tables uploaded from numpy at every use, hence host syncs every step);
then the end-to-end figures: images/s including the VAE decode, the MGD³ and ACS guidance overhead per image,
and Minimax fine-tuning steps/s against a re-creation of the reference `train_dit.py` step.

    python benchmarks/sampling.py --model XL/2 --input-size 32 --depth 0 --batch 64 --steps 50 \
        --precision bf16 --compile --vae sd-vae-ft-mse            # the GPU targets (docs/diffusion.md)
    python benchmarks/sampling.py                                # tiny CPU configuration (a minute)
    python benchmarks/sampling.py --igd      # + IGD's guided sampling cost per image relative to plain DiT
    python benchmarks/sampling.py --igd --igd-only --model XL/2 --depth 0 --input-size 32 --batch 1 --steps 50 \
        --device cuda --igd-vae              # DiT-XL/2 + an sd-vae-ft-mse-shaped decoder + ConvNet-6 at 256 px

Prints one JSON line per part (`--parts sampling,decode,mgd3,acs,minimax`): `sampling` (images/s of both
loops, speed-up, GFLOPs per image, TFLOP/s, utilisation against `--peak-tflops` or the known H100 / H200
peak), `decode` (VAE decode images/s and images/s of sampling + decode), `mgd3` / `acs` (seconds per image
with the guidance hook and the overhead over plain DiT with the same sampler), `minimax` (fine-tuning
steps/s of ddbench's loop and of the reference step, and the ratio). Random weights: speed does not depend
on their values. `--precision`: fp32 (exact), bf16 (autocast, the fast path), bf16-weights (the DiT cast to
bf16). Not a test: timings belong here, never in tests/.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ddbench.diffusion import DiT, ddim_sample, ddpm_sample, dit_config, space_timesteps  # noqa: E402
from ddbench.diffusion.fast import CompiledForward  # noqa: E402
from ddbench.diffusion.vae import VAE_CONFIGS, build_vae  # noqa: E402
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
            return peaks["fp32" if args.precision == "fp32" else "bf16"]
    return None


class Bf16Weights:
    """The DiT with bf16 weights (the other bf16 option the issue asks to measure): fp32 in, fp32 out."""

    def __init__(self, model):
        self.model = copy.deepcopy(model).to(torch.bfloat16)
        self.num_classes, self.in_channels = model.num_classes, model.in_channels

    def __call__(self, x, t, y):
        return self.model(x.to(torch.bfloat16), t, y).float()


def random_dit(args, device):
    """The benchmarked DiT (`--model`, `--input-size`, `--depth`) with seeded random weights: (config, model, the
    shape of one sample)."""
    cfg = dit_config(args.model, input_size=args.input_size, num_classes=1000)
    if args.depth:
        cfg["depth"] = args.depth
    torch.manual_seed(0)
    model = DiT(**cfg).to(device).eval()
    return cfg, model, (model.in_channels, args.input_size, args.input_size)


def model_callable(model, args):
    """(model_fn, autocast) of the chosen precision and compile setting."""
    fn = Bf16Weights(model) if args.precision == "bf16-weights" else model
    if args.compile:
        fn = CompiledForward(fn.model if isinstance(fn, Bf16Weights) else fn)
        if args.precision == "bf16-weights":
            fn = _Cast(fn)
    return fn, args.precision == "bf16"


class _Cast:
    def __init__(self, fn):
        self.fn, self.num_classes, self.in_channels = fn, fn.num_classes, fn.in_channels

    def __call__(self, x, t, y):
        return self.fn(x.to(torch.bfloat16), t, y).float()


# ---------------------------------------------------------------------------------------------------------
# End-to-end parts: VAE decode, MGD³ / ACS overhead, Minimax fine-tuning
# ---------------------------------------------------------------------------------------------------------


def part_decode(args, device, t_sample) -> dict:
    vae = build_vae(args.vae, device)
    z = torch.randn(args.batch, 4, args.input_size, args.input_size, generator=torch.Generator().manual_seed(0))
    precision = "bf16" if args.precision != "fp32" else "fp32"
    t_dec = _timed(lambda: vae.decode(z, args.decode_batch, precision), device, args.repeats)
    return {"part": "decode", "vae": args.vae, "image_side": args.input_size * 8, "precision": precision,
            "decode_batch": args.decode_batch, "decode_images_per_s": round(args.batch / t_dec, 3),
            "images_per_s_with_decode": round(args.batch / (t_sample + t_dec), 3)}


def part_mgd3(args, device, model_fn, autocast, shape, labels) -> dict:
    from ddbench.methods.mgd3 import ModeGuidance, stop_index

    modes = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(1)).to(device)
    stop = stop_index(25, args.steps)

    def run(hooks):
        return lambda: ddpm_sample(model_fn, (args.batch, *shape), labels, steps=args.steps, cfg_scale=args.cfg_scale,
                                   generator=torch.Generator().manual_seed(0), device=device, autocast=autocast,
                                   hooks=hooks())
    plain = _timed(run(lambda: ()), device, args.repeats)
    guided = _timed(run(lambda: [ModeGuidance(modes, 0.1, stop)]), device, args.repeats)
    return {"part": "mgd3", "sampler": "ddpm", "seconds_per_image_plain": round(plain / args.batch, 5),
            "seconds_per_image_mgd3": round(guided / args.batch, 5), "overhead": round(guided / plain - 1, 4)}


def part_acs(args, device, model_fn, autocast, shape, labels) -> dict:
    """ACS: DDIM with the adversarial gradient through DiT, the VAE decoder and a ResNetAP-10 every step."""
    from ddbench.methods.acs import AdversarialGuidance, DiscriminatorInput
    from ddbench.nets.build import build_net

    vae = build_vae(args.vae, device) if shape[0] == 4 else None
    side = args.input_size * 8 if vae is not None else args.input_size
    disc = build_net("resnetap10", 10, 3, min(side, 224), generator=torch.Generator().manual_seed(0)).to(device).eval()
    decode = (lambda z: vae.model.decode(z / vae.scale).sample) if vae is not None else (lambda x: x[:, :3])
    disc_input = DiscriminatorInput(min(side, 224), (0.5,) * 3, (0.5,) * 3)
    y10 = (labels % 10).to(device)

    def run(hooks):
        return lambda: ddim_sample(model_fn, (args.batch, *shape), labels, steps=args.steps, cfg_scale=args.cfg_scale,
                                   generator=torch.Generator().manual_seed(0), device=device, autocast=autocast,
                                   hooks=hooks())
    plain = _timed(run(lambda: ()), device, args.repeats)
    guided = _timed(run(lambda: [AdversarialGuidance(disc, decode, disc_input, y10, 0.01)]), device, 1)
    return {"part": "acs", "sampler": "ddim", "vae_in_gradient": vae is not None,
            "seconds_per_image_plain": round(plain / args.batch, 5),
            "seconds_per_image_acs": round(guided / args.batch, 5),
            "overhead": round(guided / plain - 1, 4)}


def part_minimax(args, device, cfg) -> dict:
    """ddbench's fine-tuning loop (Difffit, bf16 autocast on CUDA, EMA of the trainable tensors, no host read
    per step) against the reference step re-created: fp32, EMA over every parameter, loss.item() per step."""
    import tempfile

    from ddbench.methods.minimax import FINETUNE, trainable_copy
    from ddbench.methods.minimax_train import ClassMemory, finetune, minimax_terms
    from ddbench.diffusion.train import diffusion_tables, diffusion_terms

    torch.manual_seed(0)
    base = DiT(**cfg).to(device).eval()
    b, n = args.ft_batch, args.ft_steps
    side = args.input_size
    images = torch.randint(0, 256, (max(4 * b, 16), base.in_channels, side, side), dtype=torch.uint8)
    keys = torch.arange(len(images)) % 4
    ft = {**FINETUNE, "batch_size": b, "steps": n + 1, "epochs": None, "checkpoint_every": 10**9, "log_every": 10**9,
          "amp": args.precision != "fp32"}
    model = trainable_copy(base, None)
    with tempfile.TemporaryDirectory() as tmp:
        finetune(model, images, keys, keys, {**ft, "steps": 1}, Path(tmp) / "warm", {"k": 0}, device=device)
        _sync(device)
        t0 = time.perf_counter()
        finetune(model, images, keys, keys, ft, Path(tmp) / "run", {"k": 1}, device=device)
        _sync(device)
        ours = (time.perf_counter() - t0) / (n + 1)

    # the reference step (train_dit.py): whole-model EMA, fp32, a host read of the loss every step
    model = trainable_copy(base, None).train()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=ft["lr"], weight_decay=0)
    tables = diffusion_tables(ft, device)
    real, pseudo = ClassMemory(ft["memory_size"]), ClassMemory(ft["memory_size"])
    g = torch.Generator().manual_seed(0)

    def ref_step():
        idx = torch.randint(len(images), (b,), generator=g)
        x0 = (images[idx].float() / 127.5 - 1).to(device)
        t = torch.randint(1000, (b,), generator=g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        loss, x0_hat = diffusion_terms(model, tables, x0, keys[idx].to(device), t, noise, generator=g)
        rep, div = minimax_terms(x0_hat, x0, keys[idx].to(device), real, pseudo, ft["lambda_r"], ft["lambda_d"])
        opt.zero_grad()
        (loss + rep + div).backward()
        opt.step()
        with torch.no_grad():  # update_ema(ema, model.module): every parameter, frozen ones included
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(0.9999).add_(pm.detach(), alpha=1 - 0.9999)
        return loss.item()  # running_loss += loss.item()

    ref_step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        ref_step()
    _sync(device)
    ref = (time.perf_counter() - t0) / n
    return {"part": "minimax", "batch": b, "steps": n, "amp": ft["amp"] and device.type == "cuda",
            "steps_per_s": round(1 / ours, 3), "reference_steps_per_s": round(1 / ref, 3),
            "speedup": round(ref / ours, 2)}


# ---------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="S/2", help="DiT size, e.g. XL/2 (default: a tiny S/2)")
    p.add_argument("--input-size", type=int, default=8, help="latent side (32 for 256×256 images)")
    p.add_argument("--depth", type=int, default=2, help="override depth (default 2 for the tiny run; 0 = size's)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "bf16-weights"], default="fp32")
    p.add_argument("--bf16", action="store_true", help="same as --precision bf16")
    p.add_argument("--compile", action="store_true", help="torch.compile the DiT forward (eager fallback)")
    p.add_argument("--vae", choices=sorted(VAE_CONFIGS), default="tiny", help="AutoencoderKL configuration")
    p.add_argument("--decode-batch", type=int, default=32)
    p.add_argument("--ft-batch", type=int, default=4, help="Minimax fine-tuning batch (the reference: 8)")
    p.add_argument("--ft-steps", type=int, default=3)
    p.add_argument("--parts", default="sampling,decode,mgd3,acs,minimax")
    p.add_argument("--reference-images", type=int, default=2, help="images timed with the reference loop")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for the utilisation")
    p.add_argument("--igd", action="store_true", help="also print IGD's sampling cost relative to plain DiT")
    p.add_argument("--igd-only", action="store_true", help="only the IGD line (skips the reference loop)")
    p.add_argument("--igd-vae", action="store_true", help="IGD through a random sd-vae-ft-mse-shaped decoder")
    p.add_argument("--igd-checkpoints", type=int, default=4, help="surrogate checkpoints (the reference uses 4)")
    args = p.parse_args(argv)
    if args.bf16:
        args.precision = "bf16"
    return args


def main(argv=None) -> list[dict]:
    args = parse(argv)
    if args.igd or args.igd_only:
        print(json.dumps(igd_cost(args)))
        if args.igd_only:
            return []
    parts = args.parts.split(",")
    device = torch.device(args.device)
    cfg, model, shape = random_dit(args, device)
    labels = torch.arange(args.batch) % 1000
    model_fn, autocast = model_callable(model, args)
    head = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", model=args.model,
                batch=args.batch, steps=args.steps, precision=args.precision, compile=args.compile)

    def ours():
        g = torch.Generator().manual_seed(0)
        ddpm_sample(model_fn, (args.batch, *shape), labels, steps=args.steps, cfg_scale=args.cfg_scale,
                    generator=g, device=device, autocast=autocast)

    t_ours, lines = _timed(ours, device, args.repeats), []
    if "sampling" in parts:
        ref = ReferenceDDPM(args.steps)

        def reference():
            g = torch.Generator(device).manual_seed(0)  # the reference draws on the device (global RNG)
            with torch.no_grad():
                for k in range(args.reference_images):
                    ref.sample(model, [k], args.cfg_scale, shape, g, device)

        t_ref = _timed(reference, device, 1)
        ips, ips_ref = args.batch / t_ours, args.reference_images / t_ref
        flops = flops_per_image(model, args, device)
        peak = peak_tflops(args, device)
        lines.append({"part": "sampling", **head, "config": cfg, "images_per_s": round(ips, 3),
                      "reference_images_per_s": round(ips_ref, 3), "speedup": round(ips / ips_ref, 2),
                      "gflops_per_image": round(flops / 1e9, 3), "achieved_tflops": round(ips * flops / 1e12, 4),
                      "utilisation": None if peak is None else round(ips * flops / 1e12 / peak, 4),
                      "peak_tflops": peak, "compile_fallback": getattr(model_fn, "fallback", None)})
        print(json.dumps(lines[-1]), flush=True)
    more = {"decode": lambda: part_decode(args, device, t_ours),
            "mgd3": lambda: part_mgd3(args, device, model_fn, autocast, shape, labels),
            "acs": lambda: part_acs(args, device, model_fn, autocast, shape, labels),
            "minimax": lambda: part_minimax(args, device, cfg)}
    for name in (p for p in parts if p in more):
        lines.append({**head, **more[name]()})
        print(json.dumps(lines[-1]), flush=True)  # one line per part as soon as it is measured
    return lines


# ---------------------------------------------------------------------------------------------------------
# IGD: guided sampling cost per image relative to plain DiT sampling (same model, batch, steps)
# ---------------------------------------------------------------------------------------------------------


def igd_cost(args) -> dict:
    """Seconds per image of plain DDPM sampling and of IGD's (influence + deviation guidance on the reference's
    steps 30–45 of 50, rescaled), with random weights: a ConvNet surrogate (ConvNet-6 at 256 px with --igd-vae,
    else ConvNet-3 on the latent itself), `--igd-checkpoints` parameter sets and a memory of 64 latents."""
    from ddbench.methods.igd import InfluenceGuidance, guided_range
    from ddbench.nets.build import build_net

    device = torch.device(args.device)
    cfg, model, shape = random_dit(args, device)
    labels = torch.arange(args.batch) % 10
    if args.igd_vae:
        vae = build_vae("sd-vae-ft-mse", device)
        decode = lambda z: vae.model.decode(z / vae.scale).sample  # noqa: E731
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
