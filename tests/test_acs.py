"""ACS: curriculum sizes and nesting, the step size of Eq. 4, the adversarial guidance, and the adapter end to end
(a tiny exact Gaussian generator, 2 classes of 8×8 images, a few DDIM steps; ResNetAP-10 + ddbench's own
generator run in tests/test_methods.py through the card's `tiny:` section)."""
import importlib
import math
from pathlib import Path

import pytest
import torch

from ddbench.data.spec import DatasetSpec
from ddbench.diffusion import Schedule, ddim_sample
from ddbench.diffusion.generator import Generator
from ddbench.diffusion.schedule import linear_betas
from ddbench.errors import ConfigError
from ddbench.method import Context, load_method

acs = importlib.import_module("ddbench.methods.acs")
ALPHA_BAR = torch.cumprod(1 - linear_betas(), 0).float()  # ᾱ of the 1000-step process, by original timestep

SPEC = DatasetSpec(name="toy", classes=("a", "b"), resolution=8, channels=1, mean=(0.5,), std=(0.5,),
                   kind="embedded", root=None, imagenet_index=None, test_resolution=8)
FAST = {"sampling": {"steps": 3, "cfg_scale": 1.0, "cfg_channels": 1, "batch_size": 64},
        "disc": {"arch": "convnet3", "arch_kw": {"width": 16}, "epochs": 3, "batch_size": 32}}  # ResNetAP-10: test_methods


class GaussianClasses(torch.nn.Module):
    """A tiny exact generator: the ε-predictor of class-c data ~ N(μ_c·1, s²·I) on 1×8×8 images,
    ε*(x_t) = sqrt(1−ᾱ)·(x_t − sqrt(ᾱ)·μ_c)/(ᾱ·s² + 1 − ᾱ). Its samples are known (class 0 dark,
    class 1 bright), so what the guidance does is a property of the guidance alone."""

    def __init__(self, means=(-0.5, 0.5), s=0.3):
        super().__init__()
        self.register_buffer("means", torch.tensor(means))
        self.s2 = s * s
        self.config = {"in_channels": 1, "input_size": 8}
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # Generator.device reads it

    def forward(self, x, t, y):
        ab = ALPHA_BAR[t].view(-1, 1, 1, 1)
        mu = self.means[y].view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * self.s2 + 1 - ab)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tensors here are tiny: one intra-op thread avoids OpenMP overhead (40x on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """(ctx, run(ipc, **cfg) -> DistilledSet) with the base generator replaced by the tiny exact one."""
    gen = Generator(GaussianClasses().eval(), torch.arange(2), 8, None, "all", {"kind": "test"})
    monkeypatch.setattr(acs, "base_generator", lambda ctx, base: gen)
    ctx = Context(SPEC, torch.device("cpu"), Path(tmp_path), lambda: None)

    def run(ipc, seed=0, **over):
        cfg = {**FAST, **over}
        return load_method("acs", "toy", cfg).distill(ctx, ipc, seed)
    return ctx, run


def per_class(dset, c):
    return dset.images[dset.labels == c]


# ---------------------------------------------------------------------------------------------------------
# Curricula
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ipc, sizes", [(1, [1]), (5, [5]), (7, [5, 2]), (10, [5, 5]), (20, [5, 5, 10]),
                                        (50, [5, 5, 10, 30]), (70, [5, 5, 10, 30, 20]), (100, [5, 5, 10, 30, 50]),
                                        (175, [5, 5, 10, 30, 50, 50, 25])])
def test_curriculum_sizes_follow_the_paper(ipc, sizes):
    assert acs.curriculum_sizes(ipc) == sizes


def test_curricula_nest_across_ipcs():
    for small in range(1, 120):
        a = acs.curriculum_sizes(small)
        assert sum(a) == small
        for large in range(small + 1, 160):
            b = acs.curriculum_sizes(large)
            # every curriculum but the last is shared whole; the last is a prefix of the larger set's one
            assert a[:-1] == b[:len(a) - 1] and a[-1] <= b[len(a) - 1]
            assert acs.full_sizes(small)[:len(a)] == acs.full_sizes(large)[:len(a)]


def test_bad_schedules_and_ipcs_are_refused():
    with pytest.raises(ConfigError, match="positive"):
        acs.curriculum_sizes(10, [5, 0])
    with pytest.raises(ConfigError, match="ipc"):
        acs.curriculum_sizes(0)


# ---------------------------------------------------------------------------------------------------------
# Eq. 4 and the guidance
# ---------------------------------------------------------------------------------------------------------


def test_step_size_formula_on_known_tensors():
    eps = torch.zeros(2, 1, 2, 2)
    eps[0, 0, 0, 0], eps[1] = 3.0, 1.0  # ‖ε‖ = 3 and 2
    grad = torch.zeros(2, 1, 2, 2)
    grad[0, 0, 1, 1], grad[1, 0, 0] = 4.0, torch.tensor([0.5, 0.5])  # ‖∇‖ = 4 and sqrt(0.5)
    s = acs.guidance_scale(2.0, 0.36, eps, grad)
    assert s.shape == (2, 1, 1, 1)
    expected = torch.tensor([2.0 * 0.8 * 3 / 4, 2.0 * 0.8 * 2 / math.sqrt(0.5)])
    torch.testing.assert_close(s.flatten(), expected)
    # the guided displacement has norm g·sqrt(1−ᾱ)·‖ε‖, whatever the gradient's size
    torch.testing.assert_close((s * grad).flatten(1).norm(dim=1), 2.0 * 0.8 * eps.flatten(1).norm(dim=1))
    zero = acs.guidance_scale(1.0, 0.5, eps, torch.zeros_like(grad)) * torch.zeros_like(grad)
    assert torch.isfinite(zero).all() and not zero.any()


def test_guidance_raises_the_discriminator_loss_from_the_same_noise():
    model = GaussianClasses().eval()
    y = torch.tensor([0, 1] * 6)
    noise = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(5))

    def sample(hooks=()):
        # the evenly spread "5" spacing (999 … 0): the trajectory starts from pure noise
        return ddim_sample(model, (12, 1, 8, 8), y, schedule=Schedule.respaced("5"), cfg_scale=1.0, noise=noise, hooks=hooks,
                           generator=torch.Generator().manual_seed(0))

    plain = sample()
    images = ((plain.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    recipe = {"arch": "convnet3", "arch_kw": {"width": 16}, "epochs": 60, "batch_size": 12,
              "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}
    disc, disc_input, stats = acs.train_discriminator(images, y, SPEC, acs.ACS.defaults["disc"] | recipe, 0, "cpu")
    assert stats["train_acc"] == 100.0  # φ has learned the unguided samples

    def ce(x):
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(disc(disc_input(x.clamp(-1, 1))), y).item()

    hook = acs.AdversarialGuidance(disc, lambda x: x, disc_input, y, g=0.5)
    guided = sample([hook])
    assert len(hook.ce) == 5 and all(n > 0 for n in hook.step_norm)
    assert hook.ce[-1] > hook.ce[0] + 0.2  # φ's loss on x̂₀ grows along the guided trajectory
    assert ce(guided) > ce(plain) + 0.2  # measured 0.26 -> 0.66
    assert torch.equal(sample([acs.AdversarialGuidance(disc, lambda x: x, disc_input, y, g=0.0)]), plain)


def test_gradient_flows_through_a_vae_decoder():
    from diffusers import AutoencoderKL

    from ddbench.diffusion.vae import VAE

    torch.manual_seed(0)
    vae = VAE(AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                            sample_size=16, in_channels=1, out_channels=1))
    gen = Generator(GaussianClasses().eval(), torch.arange(2), 16, vae, "all", {})
    decode = acs.differentiable_decoder(gen)
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    x = decode(z)
    assert x.shape == (2, 1, 16, 16)
    (grad,) = torch.autograd.grad(x.square().sum(), z)
    assert grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(x, vae.decode(z))


# ---------------------------------------------------------------------------------------------------------
# The adapter: first curriculum unguided, nesting across IPCs, determinism, sampler choice
# ---------------------------------------------------------------------------------------------------------


def test_first_curriculum_is_unguided_and_later_ones_are_guided(toy):
    _, run = toy
    guided, plain = run(10, g=2.0), run(10, g=0.0)
    for c in (0, 1):
        assert torch.equal(per_class(guided, c)[:5], per_class(plain, c)[:5])
        assert not torch.equal(per_class(guided, c)[5:], per_class(plain, c)[5:])
    recs = guided.provenance["curricula"]
    assert [r["guided"] for r in recs] == [False, True] and [r["ipc"] for r in recs] == [5, 5]
    assert recs[1]["disc"]["images"] == 10  # φ saw exactly the first curriculum (2 classes × 5)
    assert all(math.isfinite(recs[1][k]) for k in ("disc_ce_first_step", "disc_ce_last_step", "disc_ce_samples"))
    assert guided.images.shape == (20, 1, 8, 8) and guided.labels.tolist() == [0] * 10 + [1] * 10
    small = run(3, g=2.0).provenance["curricula"]  # IPC ≤ 5: one curriculum, unguided, no φ trained
    assert len(small) == 1 and not small[0]["guided"] and "disc" not in small[0]


def test_smaller_ipc_is_a_prefix_of_a_larger_one(toy):
    _, run = toy
    ten, twenty, seven = run(10), run(20), run(7)
    assert [r["ipc"] for r in twenty.provenance["curricula"]] == [5, 5, 10]
    for c in (0, 1):
        assert torch.equal(per_class(ten, c), per_class(twenty, c)[:10])  # whole curricula: identical images
        assert torch.equal(per_class(seven, c), per_class(ten, c)[:7])  # a cut curriculum: its first images
    assert run(10, seed=1).sha256() != ten.sha256()


def test_sampler_is_the_bases_ddpm_and_ddim_is_selectable(toy):
    from ddbench.method import resolve_method_config

    _, run = toy
    assert resolve_method_config("acs", "digits")[1]["sampling"]["sampler"] is None  # null = the base card's
    default = run(6)
    assert default.provenance["base"]["config"]["sampler"] == "ddpm" == resolve_method_config("dit", "digits")[1]["sampler"]
    ddim = run(6, sampling={**FAST["sampling"], "sampler": "ddim"})
    assert ddim.provenance["base"]["config"]["sampler"] == "ddim"
    assert not torch.equal(ddim.images, default.images)
    with pytest.raises(ConfigError, match="sampler"):
        run(6, sampling={**FAST["sampling"], "sampler": "euler"})


def test_disc_max_steps_cuts_epochs_to_the_step_budget():
    from ddbench.methods.acs import disc_epochs

    cfg = {"epochs": 100, "batch_size": 64, "max_steps": 200}
    assert disc_epochs(cfg, 50) == 100          # one step an epoch: the cap is not reached
    assert disc_epochs(cfg, 500) == 25          # 8 steps an epoch
    assert disc_epochs(cfg, 20000) == 1         # never fewer than one epoch
    assert disc_epochs({**cfg, "max_steps": None}, 20000) == 100
