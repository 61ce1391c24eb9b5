"""The self-trained generator: loss terms, training, EMA, checkpoint/resume, caching, sampling, quality."""
import math

import pytest
import torch

from ddbench.data import DatasetSpec, Split
from ddbench.diffusion import train as T
from ddbench.diffusion.generator import frechet_distance, generator_quality, load_generator
from ddbench.errors import ConfigError
from ddbench.method import Context


# ---------------------------------------------------------------------------------------------------------
# Toy data: two classes of 16-px grey images (bright top half vs bright bottom half, plus noise)
# ---------------------------------------------------------------------------------------------------------

def toy_spec(classes=("top", "bottom")) -> DatasetSpec:
    return DatasetSpec(name="toy", classes=classes, resolution=16, channels=1, mean=(0.5,), std=(0.25,),
                       kind="embedded", root=None, imagenet_index=None, test_resolution=16)


def toy_split(n_per_class: int = 32, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 60, (2 * n_per_class, 1, 16, 16), generator=g).to(torch.uint8)
    images[:n_per_class, :, :8] += 180  # class 0: bright top half
    images[n_per_class:, :, 8:] += 180  # class 1: bright bottom half
    labels = torch.arange(2).repeat_interleave(n_per_class)
    return Split(images, labels, [f"train/{i}" for i in range(len(labels))])


def tiny_cfg(**over) -> dict:
    return T.generator_config(toy_spec(), {"preset": "tiny", **over})


# ---------------------------------------------------------------------------------------------------------
# Loss terms
# ---------------------------------------------------------------------------------------------------------

def test_discretized_likelihood_is_a_distribution_over_the_256_levels():
    levels = torch.arange(256).float() / 127.5 - 1  # every 8-bit value in [−1, 1]
    for mean, log_scale in ((0.0, math.log(0.3)), (0.9, math.log(0.05)), (-0.7, math.log(2.0))):
        means, log_scales = torch.full_like(levels, mean), torch.full_like(levels, log_scale)
        lp = T.discretized_gaussian_log_likelihood(levels, means, log_scales)
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=2e-3)


def test_normal_kl_is_zero_for_equal_and_positive_otherwise():
    m, lv = torch.randn(5), torch.randn(5)
    assert torch.allclose(T.normal_kl(m, lv, m, lv), torch.zeros(5), atol=1e-6)
    assert (T.normal_kl(m, lv, m + 0.5, lv - 0.3) > 0).all()


def test_vb_term_trains_only_the_variance_and_is_smallest_near_the_true_variance():
    cfg = tiny_cfg()
    tables = T.diffusion_tables(cfg, "cpu")
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    t = torch.tensor([10, 200, 500, 900])
    noise = torch.randn_like(x0)
    ac = tables["alphas_cumprod"][t].view(-1, 1, 1, 1)
    x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
    # with the true ε the model mean is the true posterior mean: KL is smallest at v = −1 (posterior variance)
    vb = [T.vb_term(tables, noise, torch.full_like(x0, v), x0, x_t, t) for v in (-1.0, 0.0, 1.0)]
    assert (vb[0] <= vb[1] + 1e-7).all() and (vb[1] <= vb[2] + 1e-7).all()
    assert torch.allclose(vb[0], torch.zeros(4), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------

def test_config_takes_shape_from_the_dataset_and_refuses_bad_values():
    cfg = tiny_cfg(hidden_size=64)
    assert (cfg["input_size"], cfg["in_channels"], cfg["num_classes"], cfg["hidden_size"]) == (16, 1, 2, 64)
    assert T.generator_config(toy_spec(), "tiny") == tiny_cfg()
    with pytest.raises(ConfigError, match="unknown generator preset"):
        T.generator_config(toy_spec(), "huge")
    with pytest.raises(ConfigError, match="no key"):
        tiny_cfg(hiden_size=64)
    with pytest.raises(ConfigError, match="does not divide"):
        tiny_cfg(patch_size=3)
    # logging and checkpoint cadence do not change the weights, so they do not change the cache key
    assert T.cache_key(tiny_cfg(log_every=7)) == T.cache_key(tiny_cfg())
    assert T.cache_key(tiny_cfg(lr=1e-4)) != T.cache_key(tiny_cfg())


# ---------------------------------------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------------------------------------

def test_ema_update_rule():
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    T.update_ema(ema, model, 0.9)
    for e, b, p in zip(ema.parameters(), before, model.parameters()):
        assert torch.allclose(e, 0.9 * b + 0.1 * p)
    T.update_ema(ema, model, 0.0)  # decay 0 copies the model
    assert all(torch.equal(e, p) for e, p in zip(ema.parameters(), model.parameters()))


def test_ema_warmup_schedule():
    cfg = tiny_cfg(ema_decay=0.999)
    assert T.ema_decay_at(cfg, 1) == pytest.approx(2 / 11)
    assert T.ema_decay_at(cfg, 10**6) == 0.999
    assert T.ema_decay_at({**cfg, "ema_warmup": False}, 1) == 0.999


# ---------------------------------------------------------------------------------------------------------
# Training, checkpoints, resume
# ---------------------------------------------------------------------------------------------------------

def test_training_loss_decreases(tmp_path):
    cfg = tiny_cfg(train_steps=60, log_every=10, checkpoint_every=60)
    path = T.train_generator(toy_split(), cfg, tmp_path)
    record = torch.load(path, weights_only=True)
    losses = [loss for _, loss in record["history"]]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < 0.6 * losses[0], losses


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    cfg = tiny_cfg(train_steps=30, checkpoint_every=10, log_every=5)
    split = toy_split()
    whole = T.train_generator(split, cfg, tmp_path / "whole")
    assert T.train_generator(split, cfg, tmp_path / "cut", stop_at=20) is None  # "killed" after step 20
    saved = torch.load(tmp_path / "cut" / T.CHECKPOINT, weights_only=True)
    assert saved["step"] == 20 and not (tmp_path / "cut" / T.FINAL).exists()
    logs = []
    resumed = T.train_generator(split, cfg, tmp_path / "cut", log=logs.append)
    assert any("resuming" in line and "step 20" in line for line in logs)
    a, b = torch.load(whole, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["history"] == b["history"]
    assert a["ema"].keys() == b["ema"].keys()
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert not (tmp_path / "cut" / T.CHECKPOINT).exists()  # superseded by the final file


def test_checkpoint_for_another_config_is_refused(tmp_path):
    split = toy_split()
    T.train_generator(split, tiny_cfg(train_steps=20, checkpoint_every=10), tmp_path, stop_at=10)
    with pytest.raises(ConfigError, match="another generator config"):
        T.train_generator(split, tiny_cfg(train_steps=20, checkpoint_every=10, lr=1e-4), tmp_path)


def test_training_does_not_touch_the_global_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    T.train_generator(toy_split(), tiny_cfg(train_steps=5), tmp_path)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------------------------------------
# The Generator bundle: cached training on first use, sampling, quality
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_ctx(tmp_path_factory):
    split = toy_split()
    return Context(toy_spec(), torch.device("cpu"), tmp_path_factory.mktemp("gen-cache"), lambda: split)


def test_load_generator_trains_once_and_reuses_the_cache(toy_ctx):
    cfg = {"generator": {"preset": "tiny", "train_steps": 20}}
    gen = load_generator(toy_ctx, cfg)
    path = gen.info["path"]
    assert path.startswith(str(toy_ctx.cache_dir / "generators" / "toy-"))
    mtime = __import__("os").stat(path).st_mtime_ns
    again = load_generator(toy_ctx, cfg)
    assert again.info["path"] == path and __import__("os").stat(path).st_mtime_ns == mtime
    other = load_generator(toy_ctx, {"generator": {"preset": "tiny", "train_steps": 21}})
    assert other.info["path"] != path


def test_sample_returns_uint8_at_dataset_resolution_and_is_seeded(toy_ctx):
    gen = load_generator(toy_ctx, {"generator": {"preset": "tiny", "train_steps": 20}})
    y = torch.tensor([0, 1, 1])
    a = gen.sample(y, torch.Generator().manual_seed(0), steps=4, cfg=2.0)
    b = gen.sample(y, torch.Generator().manual_seed(0), steps=4, cfg=2.0)
    c = gen.sample(y, torch.Generator().manual_seed(1), steps=4, cfg=2.0)
    assert a.dtype == torch.uint8 and a.shape == (3, 1, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert gen.sample(y, torch.Generator().manual_seed(0), steps=4, cfg=1.0, sampler="ddim").shape == a.shape
    with pytest.raises(ConfigError, match="class labels"):
        gen.sample(torch.tensor([2]), torch.Generator(), steps=2)
    with pytest.raises(ConfigError, match="sampler"):
        gen.sample(y, torch.Generator(), steps=2, sampler="euler")
    assert torch.allclose(gen.encode(a), a.float() / 127.5 - 1)  # pixel space: encode = scaling to [−1, 1]


def test_frechet_distance():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 4, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = frechet_distance(a, a + torch.tensor([3.0, 0, 0, 0]))
    assert shifted == pytest.approx(9.0, rel=1e-6)


def test_generator_quality_reports_per_class_accuracy_and_distances(toy_ctx):
    gen = load_generator(toy_ctx, {"generator": {"preset": "tiny", "train_steps": 20}})
    test = toy_split(16, seed=1)
    q = generator_quality(gen, toy_ctx.spec, toy_ctx.train(), test, n_per_class=8, steps=3, cfg=2.0,
                          cache_dir=toy_ctx.cache_dir, judge_recipe={"epochs": 3, "batch_size": 16})
    assert len(q["per_class"]) == 2 and all(0 <= a <= 100 for a in q["per_class"])
    assert q["acc"] == pytest.approx(sum(q["per_class"]) / 2)
    assert q["judge_test_acc"] > 90  # the toy classes are trivially separable
    assert q["fd_real"] < q["fd"]  # a 20-step generator is far from the data; real images are not
