"""Minimax diffusion: Difffit patching, the minimax terms and memories, fine-tuning, resume, phases, the method."""
import copy
import math

import pytest
import torch

from ddbench.diffusion.dit import DiT, dit_config
from ddbench.diffusion.train import diffusion_loss, diffusion_tables
from ddbench.errors import ConfigError
from ddbench.methods.minimax import PhasedDiT, phase_classes, phase_of_class, patched_view, trainable_copy
from ddbench.methods.minimax_train import (ClassMemory, apply_difffit, diffusion_terms, finetune, mark_trainable,
                                           minimax_terms)

SCHED = dict(diffusion_steps=1000, beta_start=1e-4, beta_end=0.02)
CFG = dict(batch_size=8, seed=0, hflip=True, steps=8, epochs=None, lr=1e-2, weight_decay=0.0, memory_size=6,
           lambda_r=0.002, lambda_d=0.008, ema_decay=0.9, log_every=4, checkpoint_every=3, precision="bf16", **SCHED)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is many times faster than two on a shared, loaded CPU (thread hand-offs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_dit(seed=0, num_classes=4, in_channels=1) -> DiT:
    """Every weight random: the real init zeroes the adaLN gates, which would hide the γ's."""
    torch.manual_seed(seed)
    model = DiT(input_size=8, patch_size=4, in_channels=in_channels, hidden_size=32, depth=2, num_heads=2,
                num_classes=num_classes).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def pool(n=40, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % classes


# ---------------------------------------------------------------------------------------------------------
# Difffit
# ---------------------------------------------------------------------------------------------------------


def test_difffit_trainable_set_of_dit_xl2_is_1739552_parameters():
    with torch.device("meta"):
        model = DiT(**dit_config("XL/2"))
    apply_difffit(model)
    names = mark_trainable(model)
    params = dict(model.named_parameters())
    assert sum(params[n].numel() for n in names) == 1_739_552  # protocol-facts §4.2 (analytic)
    gammas = [n for n in names if "gamma" in n]
    assert len(gammas) == 14 * 4 and {n.split(".")[1] for n in gammas} == {str(i) for i in range(14)}
    assert params["blocks.0.attn.gamma1"].shape == (3 * 1152,)
    # every trainable tensor is a bias, a γ or the label table; weights and pos_embed stay frozen
    assert all(n.endswith("bias") or "gamma" in n or n == "y_embedder.embedding_table.weight" for n in names)
    assert not params["pos_embed"].requires_grad and not params["blocks.0.attn.qkv.weight"].requires_grad


def test_gammas_at_one_leave_the_model_output_bit_identical():
    base = tiny_dit()
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([999, 500, 3]), torch.tensor([1, 4, 2])  # 4 = null label
    with torch.no_grad():
        want = base(x, t, y)
        assert torch.equal(apply_difffit(copy.deepcopy(base))(x, t, y), want)
        view = patched_view(base, None)
        assert torch.equal(view(x, t, y), want)
        view.blocks[0].gamma1.fill_(1.5)  # and the γ's do act
        assert not torch.allclose(view(x, t, y), want)
    assert view.blocks[0].attn.qkv.weight.data_ptr() == base.blocks[0].attn.qkv.weight.data_ptr()  # shared, not copied
    assert not hasattr(base.blocks[0], "gamma1")  # the base itself is not patched


# ---------------------------------------------------------------------------------------------------------
# The minimax terms and the memories
# ---------------------------------------------------------------------------------------------------------


def test_memories_are_per_class_fifos_capped_at_their_size():
    mem = ClassMemory(3)
    mem.push(0, torch.tensor([[0.0], [1.0]]))
    mem.push(1, torch.tensor([[10.0]]))
    mem.push(0, torch.tensor([[2.0], [3.0], [4.0]]))
    assert mem.get(0).flatten().tolist() == [2.0, 3.0, 4.0]  # oldest dropped first
    assert mem.get(1).flatten().tolist() == [10.0] and mem.get(2) is None

    big = ClassMemory(64)
    for step in range(10):  # 10 batches of 8 rows of class 5: capped at 64, the last 64 rows kept
        big.push(5, torch.arange(step * 8, step * 8 + 8, dtype=torch.float32)[:, None])
    assert big.get(5).flatten().tolist() == list(range(16, 80))


def test_minimax_terms_equal_their_definitions_on_hand_made_vectors():
    real, pseudo = ClassMemory(64), ClassMemory(64)
    real.push(0, torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    pseudo.push(0, torch.tensor([[1.0, 0.0]]))
    # batch: class 0 = a, b; class 1 (memories empty: skipped, but counted in |C| = 2)
    x0_hat = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]]).view(3, 2, 1, 1).requires_grad_(True)
    x0 = torch.tensor([[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]]).view(3, 2, 1, 1)
    keys = torch.tensor([0, 0, 1])
    rep, div = minimax_terms(x0_hat, x0, keys, real, pseudo, lambda_r=0.002, lambda_d=0.008)
    # cos(a, [1,1]) = cos(b, [1,1]) = 1/√2, cos(a, [1,0]) = 1, cos(b, [1,0]) = 0: min 0 -> 1 − 0; max 1
    assert rep.item() == pytest.approx(0.002 / 2 * (1 - 0.0))
    assert div.item() == pytest.approx(0.008 / 2 * 1.0)
    rep.backward(retain_graph=True)  # the terms train through x̂₀
    assert x0_hat.grad is not None and x0_hat.grad[:2].abs().sum() > 0 and x0_hat.grad[2].abs().sum() == 0
    # memories updated after the terms: real gets x0 rows, pseudo gets detached x̂₀ rows, per class
    assert real.get(0).tolist() == [[1.0, 1.0], [1.0, 0.0], [5.0, 5.0], [6.0, 6.0]]
    assert pseudo.get(0).tolist() == [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]] and not pseudo.get(0).requires_grad
    assert real.get(1).tolist() == [[7.0, 7.0]] and pseudo.get(1).tolist() == [[3.0, 4.0]]

    # second call: class 1 now has memories; its only pair is x̂₀ = [3,4] vs itself (cos 1) and real [7,7]
    rep2, div2 = minimax_terms(x0_hat[2:].detach(), x0[2:], keys[2:], real, pseudo, 0.002, 0.008)
    assert rep2.item() == pytest.approx(0.002 * (1 - 7 / (5 * math.sqrt(2))), abs=1e-9)  # float32 cos
    assert div2.item() == pytest.approx(0.008 * 1.0, rel=1e-6)


def test_diffusion_terms_give_the_base_training_loss_and_x0_hat():
    model = tiny_dit().train()
    tables = diffusion_tables(SCHED, "cpu")
    g = torch.Generator().manual_seed(3)
    x0, y = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.tensor([0, 1, 2, 3])
    t, noise = torch.tensor([0, 10, 500, 999]), torch.randn(4, 1, 8, 8, generator=g)
    loss, x0_hat = diffusion_terms(model, tables, x0, y, t, noise, generator=torch.Generator().manual_seed(7))
    want = diffusion_loss(model, tables, x0, y, t, noise, generator=torch.Generator().manual_seed(7))
    assert torch.equal(loss, want)
    # x̂₀ = (x_t − sqrt(1 − ᾱ_t)·ε_θ(x_t)) / sqrt(ᾱ_t), with the gradient of ε kept
    model.eval()  # no label dropout, so ε_θ can be recomputed here
    ac = tables["alphas_cumprod"][t].view(-1, 1, 1, 1)
    x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
    _, x0_hat = diffusion_terms(model, tables, x0, y, t, noise)
    with torch.no_grad():
        eps = model(x_t, t, y)[:, :1]
    torch.testing.assert_close(x0_hat.detach(), (x_t - (1 - ac).sqrt() * eps) / ac.sqrt(), rtol=1e-4, atol=1e-3)
    assert x0_hat.requires_grad


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning: what changes, resume
# ---------------------------------------------------------------------------------------------------------


def test_finetuning_changes_only_the_intended_parameters(tmp_path):
    base = tiny_dit()
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = trainable_copy(base, None)
    images, labels = pool()
    path = finetune(model, images, labels, labels, CFG, tmp_path, {"test": 1})
    trained = dict(model.named_parameters())
    ema = torch.load(path, weights_only=True)["ema"]
    assert set(ema) == {n for n, p in trained.items() if p.requires_grad}
    for name, p in trained.items():
        if not p.requires_grad:  # frozen: bit-identical to the base
            assert torch.equal(p, before[name]), name
        else:  # biases, the label table and the γ's (initialised to 1) all moved
            assert not torch.equal(p, before.get(name, torch.ones_like(p))), name
    assert sum(not p.requires_grad for p in trained.values()) > 10
    assert "gamma1" not in dict(model.blocks[1].named_parameters())  # depth 2: only block 0 has γ's
    for name, p in base.named_parameters():  # the base generator is untouched (frozen tensors are shared)
        assert torch.equal(p, before[name]), name


def test_an_interrupted_finetuning_resumes_to_the_uninterrupted_weights(tmp_path):
    base = tiny_dit()
    images, labels = pool()
    full = finetune(trainable_copy(base, None), images, labels, labels, CFG, tmp_path / "a", {"k": 1})
    assert finetune(trainable_copy(base, None), images, labels, labels, CFG, tmp_path / "b", {"k": 1},
                    stop_at=5) is None
    assert (tmp_path / "b" / "checkpoint.pt").exists()
    resumed = finetune(trainable_copy(base, None), images, labels, labels, CFG, tmp_path / "b", {"k": 1})
    a, b = torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["steps"] == b["steps"] == 8
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], b["ema"][name]), name
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    finetune(trainable_copy(base, None), images, labels, labels, CFG, tmp_path / "c", {"k": 1}, stop_at=3)
    with pytest.raises(ConfigError, match="another fine-tuning config"):
        finetune(trainable_copy(base, None), images, labels, labels, CFG, tmp_path / "c", {"k": 2})


# ---------------------------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------------------------


def test_phase_scheme_maps_100_classes_to_five_phases_of_20():
    phases = phase_classes(100, 20)
    assert [len(p) for p in phases] == [20] * 5
    assert phases[0] == list(range(20)) and phases[4] == list(range(80, 100))
    assert phase_of_class(100, 20).tolist() == [c // 20 for c in range(100)]
    assert len(phase_classes(1000, 20)) == 50 and phase_classes(10, 20) == [list(range(10))]
    assert [len(p) for p in phase_classes(45, 20)] == [20, 20, 5] and phase_classes(30, None) == [list(range(30))]
    with pytest.raises(ConfigError):
        phase_classes(100, 0)


def test_phased_model_runs_each_sample_with_its_phase_weights():
    base = tiny_dit(num_classes=4)
    view = patched_view(base, None).requires_grad_(False)
    names = [n for n, p in patched_view(base, None).named_parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(1)
    states = [{n: p.detach() + 0.1 * k * torch.randn(p.shape, generator=g) for n, p in view.named_parameters()
               if n in names} for k in range(2)]
    lut = torch.tensor([0, 0, 1, 1, -1])  # labels 0,1 -> phase 0; 2,3 -> phase 1; null row (4) has no own phase
    phased = PhasedDiT(view, states, lut)
    x, t = torch.randn(4, 1, 8, 8, generator=g), torch.tensor([10, 20, 30, 40])
    y = torch.tensor([0, 2, 1, 3])
    out = phased(x, t, y)
    for i, k in enumerate([0, 1, 0, 1]):
        single = copy.deepcopy(view)
        with torch.no_grad():
            for n, v in states[k].items():
                single.get_parameter(n).copy_(v)
        torch.testing.assert_close(out[i:i + 1], single(x[i:i + 1], t[i:i + 1], y[i:i + 1]), rtol=0, atol=1e-6)
    # a [cond; null] CFG batch: the null half runs with the phase of its conditional twin
    cfg_y = torch.tensor([2, 0, 4, 4])
    assert phased.phases(cfg_y).tolist() == [1, 0, 1, 0]
    with pytest.raises(ConfigError, match="null half"):
        phased(x[:2], t[:2], torch.tensor([4, 4]))


# ---------------------------------------------------------------------------------------------------------
# The method on digits (tiny card settings)
# ---------------------------------------------------------------------------------------------------------


def test_the_tiny_method_distills_ipc_images_per_class_and_reuses_its_finetuning(tmp_path):
    from ddbench.data import get_dataset, load_split
    from ddbench.method import Context, load_method, method_card
    from ddbench.methods.minimax import finetune_config

    spec = get_dataset("digits")
    split = load_split(spec, "train", cache_dir=tmp_path / "data")
    ctx = Context(spec, torch.device("cpu"), tmp_path, lambda: split)
    method = load_method("minimax", "digits", method_card("minimax")["tiny"])
    method.prepare(ctx)
    finals = list((tmp_path / "minimax").glob("*/minimax.pt"))
    assert len(finals) == 1 and not list((tmp_path / "minimax").glob("*/checkpoint.pt"))
    mtime = finals[0].stat().st_mtime_ns
    dset = method.distill(ctx, ipc=3, seed=0)
    assert torch.bincount(dset.labels, minlength=10).tolist() == [3] * 10
    assert dset.images.shape == (30, 1, 16, 16) and dset.images.dtype == torch.uint8
    assert dset.provenance["generator"]["kind"] == "minimax"
    assert method.distill(ctx, ipc=3, seed=0).sha256() == dset.sha256()
    again = load_method("minimax", "digits", method_card("minimax")["tiny"])  # a fresh process would do this
    again.prepare(ctx)
    assert finals[0].stat().st_mtime_ns == mtime  # the cached fine-tuning is reused, not redone
    with pytest.raises(ConfigError, match="stepz"):
        finetune_config({"finetune": {"stepz": 3}}, method.generator(ctx))


def test_latent_finetuning_encodes_each_batch_with_the_vae(tmp_path):
    """The ImageNet path: uint8 images -> flip -> VAE posterior sample ×0.18215 -> 4-channel latents."""
    from diffusers import AutoencoderKL

    from ddbench.diffusion.vae import VAE

    torch.manual_seed(0)
    vae = VAE(AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                            sample_size=16))
    base = tiny_dit(num_classes=1000, in_channels=4)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (12, 3, 16, 16), generator=g, dtype=torch.uint8), torch.arange(12) % 3
    cond = torch.tensor([207, 360, 999])[labels]  # DiT labels (ImageNet-1K indices); memory keys stay 0..2
    model = trainable_copy(base, None)
    cfg = CFG | dict(batch_size=6, steps=4, memory_size=64)
    assert finetune(model, images, labels, cond, cfg, tmp_path, {"k": 1}, vae=vae).exists()
    table = model.y_embedder.embedding_table.weight  # only the rows of the conditioning labels (+ null) moved
    moved = (table != base.y_embedder.embedding_table.weight).any(1).nonzero().flatten().tolist()
    assert set(moved) <= {207, 360, 999, 1000} and {207, 360, 999} & set(moved)


def test_a_multi_phase_dataset_is_finetuned_per_phase_and_sampled_per_class(tmp_path):
    """An image folder with 3 classes and phases of 2: two fine-tunings, one generator, mixed-phase batches."""
    from fakes import make_imagenet_tree

    from ddbench.data import get_dataset, load_split
    from ddbench.method import Context, load_method, method_card

    root = make_imagenet_tree(tmp_path / "folder", ["cat", "dog", "fox"], n_train=6, n_val=1, size=(16, 16))
    spec = get_dataset(f"imagefolder:{root}")
    split = load_split(spec, "train", cache_dir=tmp_path / "data")
    ctx = Context(spec, torch.device("cpu"), tmp_path / "cache", lambda: split)
    tiny = method_card("minimax")["tiny"]
    over = tiny | {"generator": {"preset": "tiny", "train_steps": 4}, "steps": 2,
                   "finetune": tiny["finetune"] | {"steps": 2, "batch_size": 4, "phase_classes": 2}}
    method = load_method("minimax", spec.name, over)
    gen = method.generator(ctx)
    assert gen.info["phases"] == 2 and len(list((tmp_path / "cache" / "minimax").glob("*/minimax.pt"))) == 2
    assert isinstance(gen.model, PhasedDiT) and gen.model.phases(torch.tensor([0, 1, 2])).tolist() == [0, 0, 1]
    dset = method.distill(ctx, ipc=1, seed=0)  # one sampling batch holds classes of both phases
    assert dset.labels.tolist() == [0, 1, 2] and dset.images.shape[0] == 3
