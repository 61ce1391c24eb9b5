"""MGD³: mode discovery, mode guidance (both injection forms), stop guidance, and the adapter end to end."""
import importlib

import pytest
import torch
from sklearn.cluster import KMeans

from ddbench.diffusion import ddim_sample, ddpm_sample
from ddbench.diffusion.schedule import linear_betas
from ddbench.errors import ConfigError

mgd3 = importlib.import_module("ddbench.methods.mgd3")

ALPHA_BAR = torch.cumprod(1 - linear_betas(), 0).float()  # ᾱ of the 1000-step process, by original timestep


class GaussianDenoiser(torch.nn.Module):
    """The exact ε-predictor for data ~ N(0, s²·I): ε*(x_t) = sqrt(1−ᾱ)·x_t / (ᾱ·s² + 1 − ᾱ).
    A tiny generator whose samples are known, so "closer to the mode" is a property of the guidance alone."""

    num_classes = 10

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.s2 = scale**2

    def forward(self, x, t, y):
        ab = ALPHA_BAR[t].view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * x / (ab * self.s2 + 1 - ab)


def _modes(n=4, shape=(1, 6, 6)):
    return 1.5 * torch.randn(n, *shape, generator=torch.Generator().manual_seed(3))


def _sample(sampler, hooks, steps=10, n=4):
    return sampler(GaussianDenoiser().eval(), (n, 1, 6, 6), torch.arange(n), steps=steps, cfg_scale=1.0,
                   generator=torch.Generator().manual_seed(0), hooks=hooks)


# ---------------------------------------------------------------------- mode discovery
def test_mode_discovery_returns_k_deterministic_centroids():
    g = torch.Generator().manual_seed(0)
    latents = torch.cat([torch.randn(30, 2, 4, 4, generator=g) + 5 * i for i in range(3)])  # 3 clear clusters
    modes = mgd3.discover_modes(latents, 3)
    assert modes.shape == (3, 2, 4, 4)
    assert torch.equal(modes, mgd3.discover_modes(latents, 3))  # random_state = 0: same modes every time
    km = KMeans(n_clusters=3, random_state=0, n_init="auto").fit(latents.flatten(1).numpy())
    torch.testing.assert_close(modes.flatten(1), torch.from_numpy(km.cluster_centers_).float())
    found = sorted(round(float(m.mean()) / 5) for m in modes)
    assert found == [0, 1, 2]  # one centroid per cluster


def test_closest_sample_modes_are_real_latents():
    latents = torch.randn(20, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    modes = mgd3.discover_modes(latents, 4, modes="closest")
    flat = latents.flatten(1)
    assert all(any(torch.equal(m, row) for row in flat) for m in modes.flatten(1))
    with pytest.raises(ConfigError, match="at least k"):
        mgd3.discover_modes(latents[:3], 4)
    with pytest.raises(ConfigError, match="modes="):
        mgd3.discover_modes(latents, 4, modes="gmm")


# ---------------------------------------------------------------------- mode guidance
@pytest.mark.parametrize("inject,sampler", [("mean", ddpm_sample), ("eps", ddpm_sample), ("eps", ddim_sample)])
def test_guided_samples_end_closer_to_their_mode(inject, sampler):
    modes = _modes()
    plain = _sample(sampler, [])
    guided = _sample(sampler, [mgd3.ModeGuidance(modes, 0.1, stop=0, inject=inject)])  # same noise, all steps
    d_plain = (plain - modes).flatten(1).norm(dim=1)
    d_guided = (guided - modes).flatten(1).norm(dim=1)
    assert (d_guided < 0.9 * d_plain).all(), (d_plain, d_guided)  # every sample, towards its own mode
    # sample i is pulled towards mode i, not towards the others: the step is aligned with its own mode
    move = (guided - plain).flatten(1)
    own = torch.cosine_similarity(move, (modes - plain).flatten(1))
    other = torch.cosine_similarity(move, (modes.roll(1, 0) - plain).flatten(1))
    assert (own > 0.5).all() and (own > other).all(), (own, other)


class _MeanProbe:
    """Records the mean before (first in the list) and after (last) the hooks in between."""

    def __init__(self, store, key):
        self.store, self.key = store, key

    def on_mean(self, state):
        self.store.setdefault(state.index, {})[self.key] = state.mean.clone()


@pytest.mark.parametrize("inject", ["mean", "eps"])
def test_stop_guidance_acts_only_above_t_stop(inject):
    steps, stop = 10, mgd3.stop_index(25, 10)
    assert stop == 5
    seen = {}
    hook = mgd3.ModeGuidance(_modes(), 0.1, stop, inject)
    _sample(ddpm_sample, [_MeanProbe(seen, "before"), hook, _MeanProbe(seen, "after")], steps=steps)
    assert hook.guided_steps == [9, 8, 7, 6]  # respaced indices > t_stop, first reverse steps only
    if inject == "mean":  # the mean form changes the mean exactly at those steps and nowhere else
        changed = sorted(i for i, d in seen.items() if not torch.equal(d["before"], d["after"]))
        assert changed == [6, 7, 8, 9]
    # no guidance (t_stop = 50) reproduces the unguided sampler bit for bit
    off = mgd3.ModeGuidance(_modes(), 0.1, mgd3.stop_index(50, steps), inject)
    assert torch.equal(_sample(ddpm_sample, [off]), _sample(ddpm_sample, []))
    assert off.guided_steps == []


def test_stop_index_keeps_the_paper_fraction():
    assert mgd3.stop_index(25, 50) == 25 and mgd3.stop_index(25, 250) == 125 and mgd3.stop_index(0, 10) == 0
    assert mgd3.stop_index(50, 20) == 20
    with pytest.raises(ConfigError, match="t_stop"):
        mgd3.stop_index(60, 50)
    with pytest.raises(ConfigError, match="inject"):
        mgd3.ModeGuidance(_modes(), 0.1, 0, "x0")


# ---------------------------------------------------------------------- the adapter, on a tiny pixel-space generator
@pytest.fixture()
def toy(monkeypatch, tmp_path):
    """A 3-class 1×6×6 dataset and a pixel-space Generator around the Gaussian denoiser, installed as the
    generator of the `dit` base (no training, no weights)."""
    from ddbench.data import Split
    from ddbench.data.spec import DatasetSpec
    from ddbench.diffusion import generator as generator_module
    from ddbench.method import Context
    from ddbench.methods import dit as dit_module

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(12)
    images = (torch.rand(36, 1, 6, 6, generator=g) * 80 + 60 * labels.view(-1, 1, 1, 1)).to(torch.uint8)
    spec = DatasetSpec(name="toy", classes=("a", "b", "c"), resolution=6, channels=1, mean=(0.5,), std=(0.5,),
                       kind="embedded", root=None, imagenet_index=None, test_resolution=6)
    split = Split(images, labels, [f"train/{i}" for i in range(36)])
    model = GaussianDenoiser(0.5).eval()
    model.config = {"in_channels": 1, "input_size": 6}
    model.register_parameter("anchor", torch.nn.Parameter(torch.zeros(1)))  # gives the bundle a device
    gen = generator_module.Generator(model, torch.arange(3), 6, None, "all", {"kind": "test"})
    monkeypatch.setattr(generator_module, "load_generator", lambda ctx, cfg, log=None: gen)
    monkeypatch.setattr(dit_module, "load_generator", lambda ctx, cfg, log=None: gen)
    return Context(spec, torch.device("cpu"), tmp_path, lambda: split), gen


SAMPLING = {"sampling": {"steps": 10, "cfg_scale": 1.0, "cfg_channels": 1, "batch_size": 4}}


def _load(name, over=None):
    from ddbench.config import deep_merge
    from ddbench.method import load_method

    return load_method(name, "toy", deep_merge(SAMPLING if name == "mgd3" else SAMPLING["sampling"], over or {}))


def test_mgd3_guides_each_image_to_its_own_mode_and_caches_the_modes(toy):
    ctx, gen = toy
    method = _load("mgd3", {"t_stop": 0, "scale": 0.2})
    method.prepare(ctx)
    dset = method.distill(ctx, ipc=3, seed=0)
    plain = _load("dit").distill(ctx, ipc=3, seed=0)  # same generator, same seed: same initial noise
    assert dset.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    modes = torch.cat([method.class_modes(ctx, gen, c, 3) for c in range(3)])  # 9×1×6×6 in [−1, 1]
    cached = sorted(p.name for p in next((ctx.cache_dir / "mgd3-modes").iterdir()).iterdir())
    assert [f for f in cached if f.startswith("modes")] == [f"modes-centroid-class{c:04d}-k3.pt" for c in range(3)]
    to_latent = lambda d: d.images.float() / 127.5 - 1  # noqa: E731 - uint8 -> the generator's [−1, 1]
    d_guided = (to_latent(dset) - modes).flatten(1).norm(dim=1)
    d_plain = (to_latent(plain) - modes).flatten(1).norm(dim=1)
    assert d_guided.mean() < 0.9 * d_plain.mean(), (d_guided, d_plain)
    assert dset.provenance["guidance"]["guided_indices"] == list(range(1, 10))
    assert method.distill(ctx, ipc=3, seed=0).sha256() == dset.sha256()  # deterministic, modes read from cache


def test_mgd3_refuses_the_mean_form_with_ddim(toy):
    ctx, _ = toy
    with pytest.raises(ConfigError, match="inject=eps"):
        _load("mgd3", {"sampling": {"sampler": "ddim"}}).distill(ctx, ipc=2, seed=0)
    dset = _load("mgd3", {"sampling": {"sampler": "ddim"}, "inject": "eps"}).distill(ctx, ipc=2, seed=0)
    assert len(dset) == 6 and dset.provenance["guidance"]["stop_index"] == 5


def test_mgd3_key_changes_with_its_config_and_the_base_card(monkeypatch):
    import ddbench.method as method_module

    a, b = _load("mgd3"), _load("mgd3", {"scale": 0.2})
    key = a.distill_key(10, 0, {})
    assert key != b.distill_key(10, 0, {}) and key == _load("mgd3").distill_key(10, 0, {})
    card = method_module.method_card
    edited = lambda name: card(name) | ({"version": 99} if name == "dit" else {})  # noqa: E731
    monkeypatch.setattr(method_module, "method_card", edited)
    assert a.distill_key(10, 0, {}) != key  # a changed `dit` card never reuses MGD³ sets made with the old one
