"""Batched augmentation: shapes, ranges, seeded determinism, and the reference semantics of each op."""
import math

import pytest
import torch
import torch.nn.functional as F

from ddbench.engine import augment as A
from ddbench.errors import ConfigError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n=8, c=3, h=20, w=20, seed=0) -> torch.Tensor:
    return torch.rand((n, c, h, w), generator=gen(seed))


def u8_batch(n=8, c=3, h=20, w=20, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), generator=gen(seed), dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------------------
# shapes, dtypes, ranges, determinism
# ---------------------------------------------------------------------------------------------------------

RANDOM_OPS = {
    "rrc": lambda x, g: A.random_resized_crop(x, 16, g, scale=(0.3, 1.0)),
    "flip": lambda x, g: A.hflip(x, g),
    "jitter": lambda x, g: A.color_jitter(x, g),
    "lighting": lambda x, g: A.lighting(x, g),
    "cutmix": lambda x, g: A.cutmix(x, g)[0],
    "idc": A.IDCAugment(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    **{f"dsa_{k}": (lambda op: lambda x, g: op(x, g, A.DSA_PARAMS))(op) for k, op in A.DSA_OPS.items()},
}


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_same_seed_same_output_different_seed_different(name):
    op, x = RANDOM_OPS[name], batch()
    a, b, c = op(x.clone(), gen(1)), op(x.clone(), gen(1)), op(x.clone(), gen(2))
    assert a.dtype == torch.float32 and a.shape[:2] == x.shape[:2]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_uint8_input_gives_float_in_unit_range():
    x = u8_batch()
    out = A.random_resized_crop(A.to_float(x), 12, gen(), scale=(0.2, 1.0))
    assert out.shape == (8, 3, 12, 12) and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    flipped = A.hflip(A.to_float(x), gen())
    assert flipped.min() >= 0.0 and flipped.max() <= 1.0
    assert torch.equal(A.to_uint8(A.to_float(x)), x)


def test_idc_pipeline_output_is_normalised_network_input():
    aug = A.IDCAugment(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    out = aug(u8_batch(16, h=24, w=24), gen())
    assert out.shape == (16, 3, 16, 16)
    assert out.min() < 0 < out.max() and out.abs().max() < 6  # (x - 0.5) / 0.25 with mild jitter overshoot


# ---------------------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------------------


def test_rrc_full_box_is_identity_resize():
    x = batch(4, h=16, w=16)
    same = A.random_resized_crop(x, 16, gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(same, x, atol=1e-6)
    up = A.random_resized_crop(x, 24, gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    ref = F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)
    assert torch.allclose(up, ref, atol=1e-5)


def test_rrc_boxes_respect_scale_ratio_and_image_bounds():
    boxes = A.rrc_boxes(4000, 32, 48, gen(), "cpu", scale=(0.25, 0.5), ratio=(0.5, 2.0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 48).all() and (boxes[:, 3] <= 32).all()
    area = w * h / (32 * 48)
    assert area.min() > 0.2 and area.max() < 0.56  # rounding of the sides widens [0.25, 0.5] slightly
    assert (w / h).min() > 0.45 and (w / h).max() < 2.2
    assert torch.equal(boxes, boxes.round())  # integer boxes, as torchvision draws them


def test_rrc_falls_back_to_clamped_centre_crop_when_no_try_fits():
    # scale > 1 can never fit: torchvision's fallback is the whole image, aspect clamped into `ratio`
    boxes = A.rrc_boxes(5, 20, 40, gen(), "cpu", scale=(2.0, 3.0), ratio=(0.75, 4 / 3))
    assert torch.equal(boxes, torch.tensor([[6.0, 0.0, 33.0, 20.0]]).expand(5, 4))


def test_flip_flips():
    x = batch()
    assert torch.equal(A.hflip(x, gen(), p=1.0), x.flip(-1))
    assert torch.equal(A.hflip(x, gen(), p=0.0), x)
    out = A.hflip(x, gen(3), p=0.5)
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_resize_center_crop_matches_torchvision_shapes():
    x = batch(2, h=30, w=40)
    out = A.resize_center_crop(x, 16)
    assert out.shape == (2, 3, 16, 16)
    assert torch.equal(A.resize_center_crop(batch(2, h=16, w=16), 16), batch(2, h=16, w=16))
    assert torch.equal(A.center_crop(x, 20), x[..., 5:25, 10:30])


# ---------------------------------------------------------------------------------------------------------
# colour
# ---------------------------------------------------------------------------------------------------------


def test_jitter_equals_idc_sequential_lerps_per_image():
    """The composed affine map equals IDC's per-image chain of lerps with the same draws."""
    x, s = batch(5), 0.4
    draws = gen(9)
    alpha = (torch.rand((5, 3), generator=draws) * 2 - 1) * s  # the draws color_jitter makes, in its order
    order = torch.argsort(torch.rand((5, 3), generator=draws), dim=1)
    out = A.color_jitter(x, gen(9), s, s, s)
    for i in range(5):
        img = x[i].clone()
        for k in order[i].tolist():
            gray = (img * torch.tensor(A.GRAY_WEIGHTS).view(3, 1, 1)).sum(0, keepdim=True).expand_as(img)
            target = [torch.zeros_like(img), gray.mean().expand_as(img), gray][k]
            img = img.lerp(target, float(alpha[i, k]))
        assert torch.allclose(out[i], img, atol=1e-5)


def test_idc_pipeline_equals_its_ops_in_sequence():
    """IDCAugment folds jitter + lighting + normalise into one map; the result must equal the op chain."""
    x, mean, std = u8_batch(6, h=24, w=24), (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    out = A.IDCAugment(16, mean, std)(x, gen(4))
    g = gen(4)
    ref = A.random_resized_crop(A.to_float(x), 16, g, (0.5, 1.0), (3 / 4, 4 / 3))
    ref = A.lighting(A.color_jitter(A.hflip(ref, g), g), g)
    assert torch.allclose(out, A.normalize(ref, mean, std), atol=1e-5)


def test_brightness_only_jitter_scales_each_image_by_one_factor():
    x = batch() + 0.1
    out = A.color_jitter(x, gen(), brightness=0.4, contrast=0.0, saturation=0.0)
    ratio = out / x
    per_image = ratio.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)
    assert per_image[:, 0].min() >= 0.6 - 1e-6 and per_image[:, 0].max() <= 1.4 + 1e-6
    assert per_image[:, 0].std() > 0  # per-sample factors


def test_saturation_leaves_gray_images_and_contrast_keeps_mean_luma():
    gray = batch(c=1).expand(-1, 3, -1, -1).contiguous()
    assert torch.allclose(A.color_jitter(gray, gen(), 0.0, 0.0, 0.4), gray, atol=1e-6)
    x = batch()
    out = A.color_jitter(x, gen(), 0.0, 0.4, 0.0)
    mean_luma = lambda t: A.grayscale(t).mean(dim=(1, 2, 3))  # noqa: E731
    assert torch.allclose(mean_luma(out), mean_luma(x), atol=1e-5)
    assert not torch.allclose(out, x)


def test_lighting_adds_one_rgb_offset_per_image():
    x = batch()
    offset = A.lighting(x, gen(), alphastd=0.1) - x
    assert torch.allclose(offset, offset[:, :, :1, :1].expand_as(offset), atol=1e-6)
    assert offset.abs().max() > 0
    assert torch.equal(A.lighting(x, gen(), alphastd=0.0), x)
    assert torch.equal(A.lighting(batch(c=1), gen()), batch(c=1))  # RGB only


# ---------------------------------------------------------------------------------------------------------
# CutMix
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_r_is_one_minus_box_area_fraction(seed):
    n, h, w = 6, 20, 24
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()
    mixed, partner, r = A.cutmix(x, gen(seed))
    assert mixed.shape == x.shape and partner.shape == (n,)
    assert sorted(partner.tolist()) == list(range(n))
    from_partner = (mixed != x)[:, 0]  # N×H×W; the same box for every sample
    i = int(torch.nonzero(partner != torch.arange(n))[0])
    frac = from_partner[i].float().mean()
    assert math.isclose(float(r), 1.0 - float(frac), abs_tol=1e-6)
    assert torch.equal(mixed[i][:, from_partner[i]], x[partner[i]][:, from_partner[i]])


def test_cutmix_gate_off_keeps_the_batch():
    x = batch()
    mixed, _, r = A.cutmix(x, gen(), p=0.0)
    assert torch.equal(mixed, x) and float(r) == 1.0


def test_beta_sampler_mean():
    g = gen()
    draws = torch.stack([A.sample_beta(2.0, 5.0, g, "cpu") for _ in range(2000)])
    assert abs(float(draws.mean()) - 2.0 / 7.0) < 0.02
    assert 0.0 <= float(draws.min()) and float(draws.max()) <= 1.0


# ---------------------------------------------------------------------------------------------------------
# DSA
# ---------------------------------------------------------------------------------------------------------


def test_dsa_crop_is_a_translation_with_zero_fill():
    x = batch(4, c=1, h=16, w=16) + 1.0  # strictly positive, so zeros mark the fill
    out = A.dsa_crop(x, gen(5), A.DSA_PARAMS)
    for o, xi in zip(out, x):
        matched = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                shifted = torch.zeros_like(xi)
                src = xi[:, max(dy, 0):16 + min(dy, 0), max(dx, 0):16 + min(dx, 0)]
                shifted[:, max(-dy, 0):16 + min(-dy, 0), max(-dx, 0):16 + min(-dx, 0)] = src
                matched |= torch.equal(o, shifted)
        assert matched


def test_dsa_cutout_zeroes_one_square_per_image():
    x = batch(6, h=16, w=16) + 1.0
    out = A.dsa_cutout(x, gen(), A.DSA_PARAMS)
    zero = (out == 0).all(dim=1)  # N×H×W
    for z in zero:
        rows, cols = torch.nonzero(z.any(dim=1)).flatten(), torch.nonzero(z.any(dim=0)).flatten()
        assert 0 < len(rows) <= 8 and 0 < len(cols) <= 8
        assert z[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # a solid rectangle
        assert int(z.sum()) == len(rows) * len(cols)


def test_dsa_scale_and_rotate_keep_the_centre_pixel_roughly():
    x = torch.zeros(2, 1, 17, 17)
    x[:, :, 6:11, 6:11] = 1.0
    for op in (A.dsa_scale, A.dsa_rotate):
        out = op(x, gen(), A.DSA_PARAMS)
        assert out.shape == x.shape and out[:, 0, 8, 8].min() > 0.9


def test_dsa_augment_normalises_then_applies_one_op_and_rejects_unknown_ops():
    aug = A.DSAugment((0.5,), (0.5,), "flip", seed=0)
    x = batch(4, c=1)
    out = aug(x, gen())
    norm = (x - 0.5) / 0.5
    assert all(torch.equal(o, n) or torch.equal(o, n.flip(-1)) for o, n in zip(out, norm))
    with pytest.raises(ConfigError, match="unknown op"):
        A.DSAugment((0.5,), (0.5,), "color_zoom")
