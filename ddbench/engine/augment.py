"""Batched, on-device image augmentation with explicit random generators.

Every op takes a float batch N×C×H×W (pixel values in [0, 1] unless it says otherwise) on any device and draws
its randomness from an explicit `torch.Generator`: draws are made on the generator's device and moved to the
images' device, so a generator on the training device keeps the step loop free of host syncs. Parameters are
per sample (one RRC box, flip, jitter and lighting draw per image) and every op is one batched tensor call:
no per-image Python loop, no PIL.

    aug = IDCAugment(224, mean, std)                      # protocol-facts §2.4 steps 3-7
    x = aug(to_float(images_u8), generator)               # N×3×224×224, normalised
    x, partner, r = cutmix(x, generator)                  # loss = r·CE(y) + (1-r)·CE(y[partner])

Sources: torchvision `RandomResizedCrop.get_params`; IDC `misc/utils.py` (ColorJitter, Lighting, rand_bbox);
DC/DSA `utils.py` (DiffAugment, ParamDiffAug).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ..errors import ConfigError

# PCA lighting of AlexNet / IDC (protocol-facts §2.4 step 6, §6.1)
LIGHTING_EIGVAL = (0.2175, 0.0188, 0.0045)
LIGHTING_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # IDC's Grayscale (ITU-R 601 luma)

# ---------------------------------------------------------------------------------------------------------
# Random draws (on the generator's device, then moved)
# ---------------------------------------------------------------------------------------------------------


def _rand(shape, g: torch.Generator, device, low: float = 0.0, high: float = 1.0, dtype=torch.float32):
    u = torch.rand(shape, generator=g, device=g.device, dtype=dtype)
    return (u * (high - low) + low).to(device)


def _randint(low, high, shape, g: torch.Generator, device) -> torch.Tensor:
    """Integers in [low, high) where `high` may be a tensor of per-sample bounds (floor of a uniform)."""
    u = torch.rand(shape, generator=g, device=g.device, dtype=torch.float64).to(device)
    return (low + u * (high - low)).floor().long()


def sample_beta(a: float, b: float, g: torch.Generator, device, tries: int = 64) -> torch.Tensor:
    """One draw of Beta(a, b) as a 0-d float64 tensor on `device`, without host syncs.

    Beta(1, 1) is the uniform; other shapes use Jöhnk's rejection method on `tries` candidate pairs at once
    (the first accepted pair wins; the chance that none is accepted is below 1e-19 for a, b ≤ 1).
    """
    if a == 1.0 and b == 1.0:
        return _rand((), g, device, dtype=torch.float64)
    u = _rand((2, tries), g, device, dtype=torch.float64)
    x, y = u[0] ** (1.0 / a), u[1] ** (1.0 / b)
    ok = (x + y) <= 1.0
    first = torch.argmax(ok.to(torch.int8))  # index of the first accepted candidate
    draw = x[first] / (x[first] + y[first]).clamp_min(1e-300)
    return torch.where(ok.any(), draw, torch.full_like(draw, a / (a + b)))


# ---------------------------------------------------------------------------------------------------------
# Conversions and deterministic resizing (test transforms, distilled-set preprocessing)
# ---------------------------------------------------------------------------------------------------------


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [0, 1]; float input is returned as float32 unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [0, 1] -> uint8 (rounded, clamped), as a PIL image would store it."""
    return x.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def resize_shorter(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision `Resize(size)`: shorter side to `size`, bilinear with antialiasing (matches PIL closely)."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    nh, nw = (size, max(1, int(size * w / h))) if h <= w else (max(1, int(size * h / w)), size)
    return F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision `CenterCrop(size)` for images at least `size` on each side."""
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top:top + size, left:left + size]


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """`Resize(size)` + `CenterCrop(size)` of a float batch: the IDC test transform and distilled-set preprocessing."""
    return center_crop(resize_shorter(x, size), size)


class Normalize:
    """The no-augmentation transform: `Normalize(mean, std)(x[, g])`; also the test transform of every protocol."""

    def __init__(self, mean, std):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        return normalize(to_float(x), self.mean, self.std)


# ---------------------------------------------------------------------------------------------------------
# Geometric ops
# ---------------------------------------------------------------------------------------------------------


def rrc_boxes(n: int, h: int, w: int, g: torch.Generator, device, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
              attempts: int = 10) -> torch.Tensor:
    """Per-sample crop boxes N×4 (x1, y1, x2, y2 in pixel edges) drawn as torchvision's RandomResizedCrop does.

    All `attempts` tries of every sample are drawn at once; each sample keeps its first valid try and falls back
    to torchvision's ratio-clamped centre crop when none is valid.
    """
    area = _rand((n, attempts), g, device, scale[0], scale[1]) * (h * w)
    aspect = torch.exp(_rand((n, attempts), g, device, math.log(ratio[0]), math.log(ratio[1])))
    cw = torch.round(torch.sqrt(area * aspect))
    ch = torch.round(torch.sqrt(area / aspect))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.argmax(ok.to(torch.int8), dim=1, keepdim=True)  # first valid attempt (0 if none)
    cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
    top = _randint(0, h - ch + 1, (n,), g, device).float()
    left = _randint(0, w - cw + 1, (n,), g, device).float()
    # torchvision's fallback: the whole image, its aspect clamped into `ratio`, centred
    in_ratio = w / h
    fw, fh = (w, round(w / min(ratio))) if in_ratio < min(ratio) else \
        ((round(h * max(ratio)), h) if in_ratio > max(ratio) else (w, h))
    any_ok = ok.any(dim=1)
    cw, ch = torch.where(any_ok, cw, float(fw)), torch.where(any_ok, ch, float(fh))
    left = torch.where(any_ok, left, float((w - fw) // 2))
    top = torch.where(any_ok, top, float((h - fh) // 2))
    return torch.stack([left, top, left + cw, top + ch], dim=1)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop box i of image i and resize it to size×size, bilinearly, in one batched `roi_align` call.

    Upsampling equals bilinear `interpolate(align_corners=False)` of the crop; when a box is larger than the
    output, roi_align averages ceil(box/size)² samples per output pixel (a box-filter antialias).
    """
    # Deviation: torchvision crops on the integer grid then resizes (antialiased for tensors since 0.17);
    # identical for upsampling, a comparable box-filter antialias when downsampling.
    rois = torch.cat([torch.arange(len(x), device=x.device, dtype=x.dtype)[:, None], boxes.to(x.dtype)], dim=1)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def random_resized_crop(x: torch.Tensor, size: int, g: torch.Generator, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision `RandomResizedCrop(size, scale, ratio)` with one box per sample: N×C×H×W -> N×C×size×size."""
    n, _, h, w = x.shape
    return crop_resize(x, rrc_boxes(n, h, w, g, x.device, scale, ratio), size)


def hflip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each sample left-right with probability p (independently per sample)."""
    flip = _rand((len(x), 1, 1, 1), g, x.device) < p
    return torch.where(flip, x.flip(-1), x)


# ---------------------------------------------------------------------------------------------------------
# Colour ops (IDC's ColorJitter and Lighting)
# ---------------------------------------------------------------------------------------------------------


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma N×1×H×W of an RGB batch (a 1-channel batch is its own grayscale)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def jitter_affine(x: torch.Tensor, g: torch.Generator, brightness: float = 0.4, contrast: float = 0.4,
                  saturation: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """IDC ColorJitter as per-sample colour maps: returns (M N×C×C, b N×C) with jitter(x) = M·x + b.

    IDC applies brightness, contrast, saturation in a random order per sample, each `x.lerp(target, a)` with
    a ~ U(-s, s): brightness toward black, contrast toward the image's mean luma, saturation toward its
    grayscale. All three are affine in the pixel colours, so the chain composes into one map.
    """
    n, c = x.shape[:2]
    w = torch.tensor(GRAY_WEIGHTS) if c == 3 else torch.full((c,), 1.0 / c)  # C: luma weights (1 channel: itself)
    w = w.to(dtype=x.dtype, device=x.device)
    strength = torch.tensor([brightness, contrast, saturation], dtype=x.dtype, device=x.device)
    alpha = (_rand((n, 3), g, x.device) * 2.0 - 1.0) * strength  # N×3, op k's factor in column k
    order = torch.argsort(_rand((n, 3), g, x.device), dim=1)  # N×3, a uniform random permutation per sample
    to_gray = torch.ones(c, 1, dtype=x.dtype, device=x.device) * w  # C×C: every output channel = luma
    mu = x.mean(dim=(2, 3))  # N×C channel means of the input
    m = torch.eye(c, dtype=x.dtype, device=x.device).expand(n, c, c)
    b = torch.zeros(n, c, dtype=x.dtype, device=x.device)
    for step in range(3):
        op = order[:, step:step + 1]  # N×1
        a = alpha.gather(1, op)  # N×1
        mean_luma = ((m @ mu[:, :, None]).squeeze(-1) + b) @ w  # N: mean luma of the current image
        sat, con = a * (op == 2), a * (op == 1)  # the lerp factor of the op applied now, else 0
        m = (1.0 - a)[:, :, None] * m + sat[:, :, None] * (to_gray @ m)
        b = (1.0 - a) * b + con * mean_luma[:, None] + sat * (b @ w)[:, None]
    return m, b


def apply_affine(x: torch.Tensor, m: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x' = M·x + b per pixel: M N×C×C, b N×C (one pass over the batch)."""
    return torch.einsum("nij,njhw->nihw", m, x) + b[:, :, None, None]


def color_jitter(x: torch.Tensor, g: torch.Generator, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4) -> torch.Tensor:
    """IDC ColorJitter (see `jitter_affine`); no clamping, as in IDC."""
    return apply_affine(x, *jitter_affine(x, g, brightness, contrast, saturation))


def lighting_offset(n: int, g: torch.Generator, device, alphastd: float = 0.1, eigval=LIGHTING_EIGVAL,
                    eigvec=LIGHTING_EIGVEC) -> torch.Tensor:
    """N×3 PCA lighting offsets: rgb[n, i] = sum_j eigvec[i, j]·alpha[n, j]·eigval[j], alpha ~ N(0, std²)."""
    alpha = torch.randn((n, 3), generator=g, device=g.device).to(device) * alphastd
    val = torch.tensor(eigval, device=device)
    vec = torch.tensor(eigvec, device=device)
    return (alpha * val) @ vec.T


def lighting(x: torch.Tensor, g: torch.Generator, alphastd: float = 0.1, eigval=LIGHTING_EIGVAL,
             eigvec=LIGHTING_EIGVEC) -> torch.Tensor:
    """IDC `Lighting`: one PCA colour offset per sample (RGB only; 1-channel data passes unchanged)."""
    if alphastd == 0 or x.shape[1] != 3:
        return x
    return x + lighting_offset(len(x), g, x.device, alphastd, eigval, eigvec).to(x.dtype)[:, :, None, None]


# ---------------------------------------------------------------------------------------------------------
# CutMix (batch level, IDC / Minimax `train.py` + `rand_bbox`)
# ---------------------------------------------------------------------------------------------------------


def cutmix(x: torch.Tensor, g: torch.Generator, beta: float = 1.0, p: float = 1.0):
    """Paste one box of a random partner into every sample. Returns (mixed, partner N, r 0-d).

    λ ~ Beta(β, β); box sides ⌊side·sqrt(1-λ)⌋, centre uniform, half-sides ⌊·/2⌋, clipped to the image;
    r = 1 - box area / image area is the weight of the sample's own label (1 when the p-gate skips the batch).
    """
    n, _, h, w = x.shape
    lam = sample_beta(beta, beta, g, x.device)
    cut = torch.sqrt(1.0 - lam)
    if p < 1.0:
        cut = cut * (_rand((), g, x.device) < p)  # gate off -> empty box, r = 1
    partner = torch.randperm(n, generator=g, device=g.device).to(x.device)
    cut_h, cut_w = (h * cut).floor().long(), (w * cut).floor().long()
    cy, cx = _randint(0, h, (), g, x.device), _randint(0, w, (), g, x.device)
    y1, y2 = (cy - cut_h // 2).clamp(0, h), (cy + cut_h // 2).clamp(0, h)
    x1, x2 = (cx - cut_w // 2).clamp(0, w), (cx + cut_w // 2).clamp(0, w)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    box = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]  # H×W
    mixed = torch.where(box, x[partner], x)
    r = 1.0 - ((y2 - y1) * (x2 - x1)).to(torch.float32) / (h * w)
    return mixed, partner, r


# ---------------------------------------------------------------------------------------------------------
# DSA ops (DC/DSA `DiffAugment`, aug_mode "S": one op per batch, parameters per sample)
# ---------------------------------------------------------------------------------------------------------

DSA_PARAMS = dict(flip=0.5, scale=1.2, rotate=15.0, crop_pad=0.125, cutout=0.5, brightness=1.0,
                  saturation=2.0, contrast=0.5)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Sample x through per-sample 2×3 affine maps (bilinear, zero padding), as DSA does."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def dsa_scale(x, g, prm):
    n, r = len(x), prm["scale"]
    s = _rand((2, n), g, x.device, 1.0 / r, r)  # sx, sy ∈ U(1/r, r)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = s[0], s[1]
    return _affine(x, theta)


def dsa_rotate(x, g, prm):
    n = len(x)
    a = (_rand((n,), g, x.device) - 0.5) * 2.0 * prm["rotate"] / 180.0 * math.pi
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    return _affine(x, theta)


def dsa_flip(x, g, prm):
    return hflip(x, g, prm["flip"])


def dsa_color(x, g, prm):
    """Brightness shift, saturation and contrast scaling in that order (DSA's "color" = three ops)."""
    n = len(x)
    u = _rand((3, n, 1, 1, 1), g, x.device)
    x = x + (u[0] - 0.5) * prm["brightness"]
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (u[1] * prm["saturation"]) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (u[2] + prm["contrast"]) + m


def dsa_crop(x, g, prm):
    """Translate by up to ±round(side·crop_pad) px per axis; uncovered pixels become 0 (DSA pads with zeros)."""
    n, _, h, w = x.shape
    sh, sw = int(h * prm["crop_pad"] + 0.5), int(w * prm["crop_pad"] + 0.5)
    ty = _randint(-sh, sh + 1, (n, 1), g, x.device)
    tx = _randint(-sw, sw + 1, (n, 1), g, x.device)
    rows = (torch.arange(h, device=x.device) + ty + 1).clamp(0, h + 1)  # N×H index into the 1-px zero pad
    cols = (torch.arange(w, device=x.device) + tx + 1).clamp(0, w + 1)  # N×W
    padded = F.pad(x, [1, 1, 1, 1])
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def dsa_cutout(x, g, prm):
    """Zero one square of side round(side·cutout) per sample, centre uniform (may hang over the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * prm["cutout"] + 0.5), int(w * prm["cutout"] + 0.5)
    oy = _randint(0, h + (1 - ch % 2), (n, 1), g, x.device) - ch // 2
    ox = _randint(0, w + (1 - cw % 2), (n, 1), g, x.device) - cw // 2
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (rows >= oy) & (rows < oy + ch)  # N×H
    in_cols = (cols >= ox) & (cols < ox + cw)  # N×W
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


DSA_OPS = {"color": dsa_color, "crop": dsa_crop, "cutout": dsa_cutout, "flip": dsa_flip, "scale": dsa_scale,
           "rotate": dsa_rotate}


# ---------------------------------------------------------------------------------------------------------
# Protocol pipelines: callables aug(x_float01, g) -> normalised network input
# ---------------------------------------------------------------------------------------------------------


class IDCAugment:
    """IDC / Minimax train transform on a batch already at `size` (steps 3-7 of protocol-facts §2.4)."""

    def __init__(self, size: int, mean, std, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), flip: float = 0.5,
                 jitter: float = 0.4, lighting_std: float = 0.1):
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)
        self.scale, self.ratio, self.flip = tuple(scale), tuple(ratio), flip
        self.jitter, self.lighting_std = jitter, lighting_std

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = random_resized_crop(to_float(x), self.size, g, self.scale, self.ratio)
        x = hflip(x, g, self.flip)
        # jitter, lighting and normalisation are all per-sample affine colour maps: fold them into one pass
        m, b = jitter_affine(x, g, self.jitter, self.jitter, self.jitter)
        if self.lighting_std and x.shape[1] == 3:
            b = b + lighting_offset(len(x), g, x.device, self.lighting_std).to(x.dtype)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)
        return apply_affine(x, m / std[None, :, None], (b - mean) / std)


class DSAugment:
    """DC/DSA evaluation augmentation: normalise, then one op of `strategy` per batch (per-sample parameters).

    The op is chosen on the host from a CPU generator seeded at construction (no device sync per batch);
    its parameters come from the generator passed at call time. DSA augments normalised images, so its
    brightness shifts and zero fills are in normalised units, as in the reference.
    """

    def __init__(self, mean, std, strategy: str = "color_crop_cutout_flip_scale_rotate", seed: int = 0,
                 params: dict | None = None):
        self.ops = [p for p in strategy.split("_") if p]
        unknown = [p for p in self.ops if p not in DSA_OPS]
        if unknown or not self.ops:
            raise ConfigError(f"DSA strategy {strategy!r}: unknown op(s) {unknown or '(none given)'}; "
                              f"ops are {', '.join(DSA_OPS)} joined by '_' (e.g. color_crop_cutout_flip_scale_rotate)")
        self.mean, self.std = tuple(mean), tuple(std)
        self.params = {**DSA_PARAMS, **(params or {})}
        self.choice = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = normalize(to_float(x), self.mean, self.std)
        op = self.ops[int(torch.randint(len(self.ops), (1,), generator=self.choice))]
        return DSA_OPS[op](x, g, self.params)
