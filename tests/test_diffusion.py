"""Diffusion core: DiT model + loading (original and diffusers formats), schedule, samplers, hooks, VAE."""

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

from ddbench.diffusion import (DiT, GuidanceHook, ddim_sample, ddpm_sample, dit_config, imagenet_label,
                               infer_dit_config, load_dit, load_vae, space_timesteps)
from ddbench.diffusion.load import dit_to_diffusers, diffusers_config
from ddbench.diffusion.schedule import Schedule, linear_betas
from ddbench.errors import ConfigError, DataError

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10)


def tiny_dit(seed=0, **kw) -> DiT:
    """A tiny DiT with every weight random (the real init zeroes adaLN and the output, i.e. outputs 0)."""
    torch.manual_seed(seed)
    model = DiT(**(TINY | kw)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def inputs(n=3, seed=1, c=4, size=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g), torch.tensor([999, 500, 3][:n]), torch.tensor([1, 4, 10][:n])


# ---------------------------------------------------------------------------------------------------------
# Loading: original format, diffusers format, config inference, errors
# ---------------------------------------------------------------------------------------------------------


def _diffusers_model(model: DiT):
    from diffusers import DiTTransformer2DModel

    # norm_eps: the original DiT uses 1e-6 in every LayerNorm (diffusers' default 1e-5 is used for norm3)
    dm = DiTTransformer2DModel(**diffusers_config(model.config), norm_eps=1e-6).eval()
    dm.load_state_dict(dit_to_diffusers(model.state_dict(), model.config["depth"]), strict=True)
    return dm


def test_original_and_diffusers_formats_give_the_same_model(tmp_path):
    model = tiny_dit()
    x, t, y = inputs()
    with torch.no_grad():
        want = model(x, t, y)
    assert want.shape == (3, 8, 8, 8)  # ε and the learned-variance half

    torch.save(model.state_dict(), tmp_path / "plain.pt")
    other = tiny_dit(seed=5).state_dict()  # training checkpoint: "ema" must win over "model"
    torch.save({"model": other, "ema": model.state_dict(), "args": argparse.Namespace(lr=1e-4),
                "model_config": model.config}, tmp_path / "ck.pt")
    dm = _diffusers_model(model)
    dm.save_pretrained(tmp_path / "pipe" / "transformer")  # pipeline layout
    # heads: not in a plain state dict's shapes (given here), saved "config" in ck.pt, config.json for diffusers
    for path, heads in [("plain.pt", 2), ("ck.pt", None), ("pipe", None), ("pipe/transformer", None)]:
        loaded = load_dit(tmp_path / path, num_heads=heads)
        assert loaded.config == model.config, path
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, t, y), want, atol=1e-5, rtol=0, msg=path)

    # diffusers' own forward agrees once its timestep frequencies are made DiT's (exponent / half, not half−1)
    with torch.no_grad():
        unpatched = dm(x, timestep=t, class_labels=y).sample
        for block in dm.transformer_blocks:
            block.norm1.emb.time_proj.downscale_freq_shift = 0
        torch.testing.assert_close(dm(x, timestep=t, class_labels=y).sample, want, atol=1e-5, rtol=0)
    assert (unpatched - want).abs().max() > 1e-4  # the documented diffusers deviation is real


def test_diffusers_folder_with_untied_embedders_is_refused(tmp_path):
    dm = _diffusers_model(tiny_dit())
    with torch.no_grad():
        dm.transformer_blocks[1].norm1.emb.class_embedder.embedding_table.weight.add_(1.0)
    dm.save_pretrained(tmp_path / "m")
    with pytest.raises(DataError, match="shares one embedder"):
        load_dit(tmp_path / "m")


def test_infer_config_of_dit_xl2_on_meta():
    with torch.device("meta"):
        sd = DiT(**dit_config("XL/2")).state_dict()
    assert all(v.is_meta for v in sd.values())  # nothing allocated
    assert sum(v.numel() for v in sd.values()) == 675_129_632  # 675.1 M with pos_embed
    assert infer_dit_config(sd) == dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28,
                                        num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000,
                                        learn_sigma=True)


@pytest.mark.parametrize("size,patch,inp,c,sigma", [("S/4", 4, 16, 1, False), ("B/8", 8, 32, 3, True)])
def test_infer_config_other_sizes(size, patch, inp, c, sigma):
    cfg = dit_config(size, input_size=inp, in_channels=c, learn_sigma=sigma, num_classes=7)
    with torch.device("meta"):
        got = infer_dit_config(DiT(**cfg).state_dict())
    assert {k: got[k] for k in cfg} == cfg


def test_missing_checkpoint_says_what_to_supply(tmp_path, monkeypatch):
    monkeypatch.delenv("DDBENCH_DIT", raising=False)
    monkeypatch.delenv("DDBENCH_VAE", raising=False)
    with pytest.raises(DataError, match="--dit.*DDBENCH_DIT"):
        load_dit(None)
    with pytest.raises(DataError, match=r"not found at .*nope\.pt.*--dit"):
        load_dit(tmp_path / "nope.pt")
    with pytest.raises(DataError, match="--vae.*DDBENCH_VAE"):
        load_vae(None)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read DiT weights"):
        load_dit(tmp_path / "junk.pt")
    torch.save(tiny_dit().state_dict(), tmp_path / "env.pt")
    monkeypatch.setenv("DDBENCH_DIT", str(tmp_path / "env.pt"))
    with pytest.raises(DataError, match="attention heads for hidden size 32"):
        load_dit()  # found through the environment; the head count must then be given
    assert load_dit(num_heads=2).config["hidden_size"] == 32


# ---------------------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------------------


def test_forward_with_cfg_guides_exactly_three_channels():
    model = tiny_dit()
    x, t, _ = inputs(2)
    xx, tt, yy = torch.cat([x, x.flip(0)]), torch.cat([t, t]), torch.tensor([1, 4, 10, 10])
    with torch.no_grad():
        out = model.forward_with_cfg(xx, tt, yy, 4.0)
        raw = model(torch.cat([x, x]), tt, yy)  # the null half of x is replaced by the conditional half
        out_all = model.forward_with_cfg(xx, tt, yy, 4.0, channels="all")
    cond, uncond = raw[:2], raw[2:]
    guided = uncond[:, :3] + 4.0 * (cond[:, :3] - uncond[:, :3])
    torch.testing.assert_close(out[:2, :3], guided)
    torch.testing.assert_close(out[2:, :3], guided)
    assert torch.equal(out[:2, 3:], cond[:, 3:])  # 4th ε channel and the variance: each half its own
    assert torch.equal(out[2:, 3:], uncond[:, 3:])
    torch.testing.assert_close(out_all[:2, 3], uncond[:, 3] + 4.0 * (cond[:, 3] - uncond[:, 3]))
    assert not torch.allclose(out_all[:2, 3], cond[:, 3])


def test_cfg_channels_must_fit_the_model():
    model = tiny_dit(in_channels=1)
    with pytest.raises(ConfigError, match="cfg_channels=3"):
        ddpm_sample(model, (1, 1, 8, 8), [0], steps=2, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------------
# Schedule and samplers
# ---------------------------------------------------------------------------------------------------------


def test_50_step_respacing_matches_the_reference():
    assert space_timesteps(1000, "50") == [
        0, 20, 41, 61, 82, 102, 122, 143, 163, 183, 204, 224, 245, 265, 285, 306, 326, 347, 367, 387, 408, 428,
        449, 469, 489, 510, 530, 550, 571, 591, 612, 632, 652, 673, 693, 714, 734, 754, 775, 795, 816, 836,
        856, 877, 897, 917, 938, 958, 979, 999]
    assert space_timesteps(1000, "ddim50")[:3] == [0, 20, 40]
    assert space_timesteps(300, "10,15,20")[:3] == [0, 11, 22] and len(space_timesteps(300, "10,15,20")) == 45
    s = Schedule.respaced(50)
    base = torch.cumprod(1 - linear_betas(), 0)[list(s.timesteps)]
    torch.testing.assert_close(s.alphas_cumprod, base, rtol=1e-12, atol=0)  # kept ᾱ's unchanged
    with pytest.raises(ConfigError):
        space_timesteps(10, "20")


def _reference_module():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "sampling.py"
    spec = importlib.util.spec_from_file_location("ddbench_bench_sampling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ddpm_equals_the_reference_loop():
    """The same generator seed through the re-created DiT p_sample_loop and through ddpm_sample."""
    model = tiny_dit()
    ref = _reference_module().ReferenceDDPM(10)
    with torch.no_grad():
        want = ref.sample(model, [3, 7], 4.0, (4, 8, 8), torch.Generator().manual_seed(1), torch.device("cpu"))
    got = ddpm_sample(model, (2, 4, 8, 8), torch.tensor([3, 7]), steps=10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("sampler", [ddpm_sample, ddim_sample])
def test_same_seed_same_samples(sampler):
    model = tiny_dit()

    def run(seed, **kw):
        return sampler(model, (2, 4, 8, 8), [1, 2], steps=5, generator=torch.Generator().manual_seed(seed), **kw)

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a, run(0, cfg_scale=1.0))  # guidance changes the samples
    if sampler is ddim_sample:
        assert not torch.allclose(a, run(0, eta=1.0))


class Recorder(GuidanceHook):
    def __init__(self):
        self.seen = []

    def on_eps(self, s):
        self.seen.append(("eps", s.index, s.timestep, s.x_t.shape, s.eps.shape, s.x0_hat.shape, s.y.tolist()))

    def on_mean(self, s):
        self.seen.append(("mean", s.index, s.mean.shape, s.sigma.shape, s.log_variance.shape))


class ShiftLastMean:  # a plain object: hooks need not subclass GuidanceHook
    def on_mean(self, s):
        return s.mean + 0.5 if s.index == 0 else None


def test_hooks_see_each_step_and_change_the_output():
    model, g = tiny_dit(), lambda: torch.Generator().manual_seed(3)
    rec = Recorder()
    base = ddpm_sample(model, (2, 4, 8, 8), [1, 2], steps=4, generator=g(), hooks=[rec])
    keep = space_timesteps(1000, "4")
    eps_calls = [e for e in rec.seen if e[0] == "eps"]
    assert [(e[1], e[2]) for e in eps_calls] == [(i, keep[i]) for i in (3, 2, 1, 0)]
    assert all(e[3] == e[4] == e[5] == (2, 4, 8, 8) and e[6] == [1, 2] for e in eps_calls)
    assert all(m[2] == m[3] == m[4] == (2, 4, 8, 8) for m in rec.seen if m[0] == "mean")
    shifted = ddpm_sample(model, (2, 4, 8, 8), [1, 2], steps=4, generator=g(), hooks=[ShiftLastMean()])
    torch.testing.assert_close(shifted, base + 0.5)  # the last step adds no noise: the shift shows exactly


def test_fixed_variance_without_learned_sigma():
    """learn_sigma=False: DiT's default 'fixed large' variance, log β (log β̃₁ at the first step)."""
    model, seen = tiny_dit(learn_sigma=False), {}

    class Var:
        def on_mean(self, s):
            seen[s.index] = s.log_variance.unique().tolist()

    out = ddpm_sample(model, (1, 4, 8, 8), [0], steps=3, generator=torch.Generator().manual_seed(0), hooks=Var())
    sched = Schedule.respaced(3)
    assert out.shape == (1, 4, 8, 8) and sorted(seen) == [0, 1, 2]
    for i in (1, 2):
        assert seen[i] == pytest.approx([torch.log(sched.betas[i]).item()], rel=1e-6)
    assert seen[0] == pytest.approx([sched.posterior_log_variance_clipped[0].item()], rel=1e-6)
    with pytest.raises(ValueError, match="model.eval"):
        ddpm_sample(model.train(), (1, 4, 8, 8), [0], steps=2, generator=torch.Generator().manual_seed(0))


class ZeroLastEps:
    def on_eps(self, s):
        if s.index == 0:
            self.x_t, self.ab = s.x_t.clone(), s.alpha_bar
            return torch.zeros_like(s.eps)
        return None


def test_eps_hook_feeds_x0_and_the_mean():
    hook = ZeroLastEps()
    out = ddpm_sample(tiny_dit(), (1, 4, 8, 8), [2], steps=3, generator=torch.Generator().manual_seed(0), hooks=hook)
    # last step: ᾱ_prev = 1, so x_{-1} = x̂₀ = x_t / sqrt(ᾱ) once ε = 0
    torch.testing.assert_close(out, hook.x_t * (1 / hook.ab) ** 0.5)


class GradientHook:
    """ACS-style: a gradient through the model w.r.t. x_t, taken inside the no-grad sampler."""

    def __init__(self):
        self.norms = []

    def on_xt(self, s):
        with torch.enable_grad():
            x = s.x_t.detach().requires_grad_(True)
            _, x0 = s.predict(x)
            (grad,) = torch.autograd.grad(x0.square().sum(), x)
        self.norms.append(grad.norm().item())
        return s.x_prev - 1e-3 * grad


def test_gradient_hook_runs_the_model_with_grad():
    model, hook = tiny_dit(), GradientHook()
    plain = ddim_sample(model, (1, 4, 8, 8), [2], steps=3, generator=torch.Generator().manual_seed(0))
    guided = ddim_sample(model, (1, 4, 8, 8), [2], steps=3, generator=torch.Generator().manual_seed(0), hooks=[hook])
    assert len(hook.norms) == 3 and all(n > 0 for n in hook.norms)
    assert not torch.allclose(plain, guided)


# ---------------------------------------------------------------------------------------------------------
# VAE and labels
# ---------------------------------------------------------------------------------------------------------


def test_tiny_vae_roundtrip_shapes(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  sample_size=16).save_pretrained(tmp_path / "pipe" / "vae")
    vae = load_vae(tmp_path / "pipe")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(z, vae.model.encode(x).latent_dist.mean * 0.18215)
    s1, s2 = (vae.encode(x, "sample", torch.Generator().manual_seed(s), batch_size=1) for s in (0, 0))
    assert torch.equal(s1, s2) and not torch.allclose(s1, z)
    assert vae.decode(z, batch_size=1).shape == (2, 3, 16, 16)


def test_vae_load_prints_no_accelerate_advice(tmp_path, monkeypatch, capfd):
    """Without `accelerate`, diffusers' default loading prints a multi-line install advice at every VAE load;
    load_vae asks for the plain loading then, so a run's output stays clean."""
    import logging

    import diffusers.models.modeling_utils as modeling_utils
    import diffusers.utils
    from diffusers import AutoencoderKL

    monkeypatch.setattr(modeling_utils, "is_accelerate_available", lambda: False)  # as where it is not installed
    monkeypatch.setattr(diffusers.utils, "is_accelerate_available", lambda: False)
    AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4,
                  sample_size=8).save_pretrained(tmp_path / "vae")
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("diffusers").addHandler(handler)
    try:
        vae = load_vae(tmp_path / "vae")
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    out, err = capfd.readouterr()
    assert vae.encode(torch.zeros(1, 3, 8, 8)).shape == (1, 4, 8, 8)
    assert not [m for m in seen if "accelerate" in m], seen
    assert "accelerate" not in out + err


def test_imagenet_label():
    assert imagenet_label("n01440764") == 0 and imagenet_label("n15075141") == 999
    with pytest.raises(DataError, match="did you mean"):
        imagenet_label("n01440765")
