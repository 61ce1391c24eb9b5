"""IGD: the influence term's gradient direction, the deviation term, the guided step range, checkpoint selection."""
import importlib

import pytest
import torch
import torch.nn.functional as F

from ddbench.diffusion import ddpm_sample
from ddbench.diffusion.schedule import linear_betas
from ddbench.errors import ConfigError

igd = importlib.import_module("ddbench.methods.igd")

ALPHA_BAR = torch.cumprod(1 - linear_betas(), 0).float()


class GaussianDenoiser(torch.nn.Module):
    """The exact ε-predictor for data ~ N(0, I): ε*(x_t) = sqrt(1−ᾱ)·x_t (differentiable, known samples)."""

    num_classes = 10

    def forward(self, x, t, y):
        return (1 - ALPHA_BAR[t].view(-1, 1, 1, 1)).sqrt() * x


def _linear_net(seed=0):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    torch.manual_seed(seed)
    for p in net.parameters():
        torch.nn.init.normal_(p)
    return net.eval()


def _params(net):
    return {k: v.detach() for k, v in net.named_parameters()}


# ---------------------------------------------------------------------- influence term
def test_influence_term_is_one_on_the_real_image_and_its_gradient_raises_it():
    net, p = _linear_net(), None
    p = _params(net)
    real = torch.randn(1, 1, 2, 3, generator=torch.Generator().manual_seed(1))
    label = torch.tensor([2])
    g_real = igd.class_gradient(net, p, real, 2, chunk=1)  # P, the "class-mean" gradient of one real image
    assert igd.influence_term(net, real, label, [p], g_real.view(1, 1, -1)).item() == pytest.approx(1.0, abs=1e-5)

    x = torch.randn(4, 1, 2, 3, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    labels = label.repeat(4)
    g = igd.influence_term(net, x, labels, [p], g_real.view(1, 1, -1).expand(4, 1, -1))
    (dx,) = torch.autograd.grad(g.sum(), x)
    assert dx.abs().sum() > 0, "the influence term must depend on the image (double backward through the surrogate)"
    after = igd.influence_term(net, (x + 1e-2 * dx).detach(), labels, [p], g_real.view(1, 1, -1).expand(4, 1, -1))
    assert (after > g.detach()).all(), "a step along ∇G_I must raise each sample's gradient agreement"
    below = igd.influence_term(net, (x - 1e-2 * dx).detach(), labels, [p], g_real.view(1, 1, -1).expand(4, 1, -1))
    assert (below < g.detach()).all()


def test_influence_term_averages_the_cosines_over_checkpoints():
    net = _linear_net()
    p0, p1 = _params(net), _params(_linear_net(seed=5))
    x, y = torch.randn(3, 1, 2, 3), torch.tensor([0, 1, 2])
    real = torch.randn(3, 2, sum(v.numel() for v in p0.values()))
    each = [F.cosine_similarity(igd.per_sample_grads(net, x, y, p), real[:, j], dim=1) for j, p in enumerate((p0, p1))]
    both = igd.influence_term(net, x, y, [p0, p1], real)
    assert torch.allclose(both, (each[0] + each[1]) / 2, atol=1e-6)
    # per-sample gradients are those of each sample alone (vmap, not a batch mean)
    alone = igd.per_sample_grads(net, x[1:2], y[1:2], p0)
    assert torch.allclose(igd.per_sample_grads(net, x, y, p0)[1], alone[0], atol=1e-6)


# ---------------------------------------------------------------------- deviation term
def test_deviation_term_is_minus_the_largest_cosine_to_the_memory():
    m = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]).view(2, 1, 2, 2)
    x0 = torch.tensor([[2.0, 0, 0, 0], [0, 0, 3.0, 0], [1.0, 1.0, 0, 0]]).view(3, 1, 2, 2)
    d = igd.deviation_term(x0, m)
    assert torch.allclose(d, torch.tensor([-1.0, 0.0, -(2**-0.5)]), atol=1e-6)
    assert torch.equal(igd.deviation_term(x0, None), torch.zeros(3))  # the first sample of a class: no memory
    x = x0.clone().requires_grad_(True)
    (dx,) = torch.autograd.grad(igd.deviation_term(x, m).sum(), x)
    after = F.cosine_similarity((x0 + 0.1 * dx).flatten(1)[2:], m.flatten(1)[:1]).item()
    assert after < 2**-0.5, "ascending G_D moves a sample away from its most similar earlier sample"


# ---------------------------------------------------------------------- guided step range
def test_guided_range_rescales_the_reference_indices_and_refuses_bad_ones():
    assert igd.guided_range(30, 45, 50) == (30, 45)
    assert igd.guided_range(30, 45, 10) == (6, 9)
    for low, high in ((45, 30), (-1, 10), (30, 50)):
        with pytest.raises(ConfigError, match="low"):
            igd.guided_range(low, high, 50)


def _hook(low, high, memory, inject="mean", gamma=1.0):
    ident = torch.nn.Identity()
    return igd.InfluenceGuidance(ident, [], None, torch.zeros(4, dtype=torch.long), memory, lambda x: x, lambda x: x,
                                 k=0.0, gamma=gamma, low=low, high=high, inject=inject)


def _sample(hooks, steps=10):
    return ddpm_sample(GaussianDenoiser().eval(), (4, 1, 4, 4), torch.arange(4), steps=steps, cfg_scale=1.0,
                       generator=torch.Generator().manual_seed(0), hooks=hooks)


@pytest.mark.parametrize("inject", ["mean", "eps"])
def test_guidance_acts_exactly_inside_the_range_and_pushes_away_from_the_memory(inject):
    memory = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    low, high = igd.guided_range(30, 45, 10)
    hook = _hook(low, high, memory, inject, gamma=20.0)
    guided = _sample([hook])
    assert hook.guided_steps == [9, 8, 7, 6]  # respaced indices 9 … 6 (noisiest first) and no others
    plain = _sample([])
    cos = lambda z: F.cosine_similarity(z.flatten(1).unsqueeze(1), memory.flatten(1).unsqueeze(0), dim=2).max(1).values
    # each sample ends no closer to its nearest earlier sample, and the batch clearly further away
    assert (cos(guided) <= cos(plain) + 1e-3).all() and cos(guided).mean() < cos(plain).mean() - 0.05
    off = _hook(low, high, memory, inject, gamma=0.0)  # both factors 0: the unguided sampler bit for bit
    assert torch.equal(_sample([off]), plain) and off.guided_steps == []


def test_deviation_only_guidance_leaves_a_class_first_sample_alone():
    """k = 0 (deviation only) and an empty memory: nothing to push away from, the unguided sample bit for bit."""
    low, high = igd.guided_range(30, 45, 10)
    hook = _hook(low, high, None, gamma=20.0)
    assert torch.equal(_sample([hook]), _sample([])) and hook.guided_steps == [9, 8, 7, 6]


def test_hook_refuses_an_unknown_injection():
    with pytest.raises(ConfigError, match="inject"):
        _hook(0, 1, None, inject="x0")


# ---------------------------------------------------------------------- checkpoint selection (test_ckpts_grad_sim.py)
def test_checkpoint_selection_keeps_a_checkpoint_when_the_gradients_have_turned():
    e = torch.eye(4)
    turn = lambda a: torch.stack([torch.cos(torch.tensor(a)) * e[0] + torch.sin(torch.tensor(a)) * e[1]] * 2)
    grads = torch.stack([turn(a) for a in (0.0, 0.3, 0.6, 0.9, 1.0, 2.0)])  # T×K×P, angle to θ_0 in radians
    # cos(0.9) = 0.62 < 0.7 keeps θ_3; from θ_3, cos(0.1) and then cos(1.1) = 0.45 keeps θ_5
    assert igd.select_checkpoints(grads, 0.7) == [0, 3, 5]
    assert igd.select_checkpoints(grads, -1.0) == [0]


def test_repeat_other_than_one_and_low_above_high_are_refused_when_the_config_is_resolved():
    from ddbench.method import load_method

    with pytest.raises(ConfigError, match="repeat=1"):
        load_method("igd", "digits", {"repeat": 2})
    with pytest.raises(ConfigError, match="need 0 ≤ low ≤ high"):
        load_method("igd", "digits", {"low": 40, "high": 30})
