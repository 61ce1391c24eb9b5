"""The `dit` method: self-trained generator on embedded-style data, pretrained DiT + VAE on ImageNet subsets."""
import pytest
import torch

from ddbench.data import DatasetSpec, Split, get_dataset
from ddbench.data.spec import read_class_list
from ddbench.diffusion.dit import DiT
from ddbench.errors import DataError
from ddbench.method import Context, load_method, method_card
from fakes import make_imagenet_tree


def tiny_dit_method(dataset: str = "digits", **over):
    """The card's `tiny:` config as resolved for `dataset`."""
    return load_method("dit", dataset, {**method_card("dit")["tiny"], **over})


# ---------------------------------------------------------------------------------------------------------
# Self-trained generator (a 3-class, 16-px toy pool)
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_ctx(tmp_path_factory):
    spec = DatasetSpec(name="toy3", classes=("a", "b", "c"), resolution=16, channels=1, mean=(0.5,), std=(0.25,),
                       kind="embedded", root=None, imagenet_index=None, test_resolution=16)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (30, 1, 16, 16), generator=g).to(torch.uint8)
    split = Split(images, torch.arange(3).repeat_interleave(10), [f"train/{i}" for i in range(30)])
    return Context(spec, torch.device("cpu"), tmp_path_factory.mktemp("dit-cache"), lambda: split)


def test_dit_distills_ipc_images_per_class_with_seeded_noise(toy_ctx):
    method = tiny_dit_method(batch_size=4)  # 4 does not divide 3·3: the last batch is partial
    method.prepare(toy_ctx)
    dset = method.distill(toy_ctx, ipc=3, seed=0)
    assert dset.images.dtype == torch.uint8 and dset.images.shape == (9, 1, 16, 16)
    assert dset.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert dset.classes == toy_ctx.spec.classes
    assert dset.provenance["generator"]["kind"] == "self-trained"
    assert method.distill(toy_ctx, ipc=3, seed=0).sha256() == dset.sha256()
    assert method.distill(toy_ctx, ipc=3, seed=1).sha256() != dset.sha256()


def test_a_fresh_method_object_reproduces_the_set(toy_ctx):
    """The set depends on (config, ipc, seed) only: a new adapter object (a new process) gives the same pixels."""
    a = tiny_dit_method(batch_size=9).distill(toy_ctx, ipc=3, seed=5)
    b = tiny_dit_method(batch_size=9).distill(toy_ctx, ipc=3, seed=5)
    assert torch.equal(a.images, b.images)
    assert (a.images.float().std(dim=(1, 2, 3)) > 0).all()  # no blank images


# ---------------------------------------------------------------------------------------------------------
# ImageNet subsets: pretrained DiT + VAE given by the user
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nette_ctx(tmp_path_factory):
    root = make_imagenet_tree(tmp_path_factory.mktemp("imagenet"), read_class_list("nette"), n_train=1, n_val=1)
    spec = get_dataset("nette", imagenet_root=str(root))
    return Context(spec, torch.device("cpu"), tmp_path_factory.mktemp("nette-cache"), lambda: None)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A random ImageNet-class DiT (original .pt format) on 4×8×8 latents and a 2× AutoencoderKL."""
    from diffusers import AutoencoderKL

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    dit = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=1, num_heads=1, num_classes=1000)
    for p in dit.parameters():  # the zero-initialised output layers would make every sample identical
        p.data.add_(0.02 * torch.randn_like(p))
    torch.save(dit.state_dict(), folder / "dit.pt")
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4,
                        layers_per_block=1, sample_size=16)
    vae.save_pretrained(folder / "vae")
    return folder / "dit.pt", folder / "vae"


def test_missing_dit_path_names_the_flag_and_the_variable(nette_ctx, monkeypatch, tiny_weights):
    monkeypatch.delenv("DDBENCH_DIT", raising=False)
    monkeypatch.delenv("DDBENCH_VAE", raising=False)
    method = load_method("dit", "nette")
    with pytest.raises(DataError, match=r"--dit.*DDBENCH_DIT"):
        method.prepare(nette_ctx)
    ctx = Context(nette_ctx.spec, nette_ctx.device, nette_ctx.cache_dir, nette_ctx.train,
                  options={"dit": str(tiny_weights[0])})
    with pytest.raises(DataError, match=r"--vae.*DDBENCH_VAE"):
        method.prepare(ctx)


def test_pretrained_dit_samples_256px_sets_conditioned_on_imagenet_indices(nette_ctx, tiny_weights, monkeypatch):
    monkeypatch.delenv("DDBENCH_VAE", raising=False)
    monkeypatch.setenv("DDBENCH_DIT", str(tiny_weights[0]))  # the environment variable is honoured too
    ctx = Context(nette_ctx.spec, nette_ctx.device, nette_ctx.cache_dir, nette_ctx.train,
                  options={"vae": str(tiny_weights[1])})
    method = load_method("dit", "nette", {"steps": 3, "batch_size": 8})
    assert method.cfg["cfg_scale"] == 4.0 and method.cfg["cfg_channels"] == 3  # the reference settings
    dset = method.distill(ctx, ipc=1, seed=0)
    assert dset.images.dtype == torch.uint8 and dset.images.shape == (10, 3, 256, 256)
    assert dset.provenance["generator"]["kind"] == "pretrained"
    from ddbench.diffusion.generator import load_generator

    gen = load_generator(ctx, method.cfg)
    assert gen.cond_labels.tolist() == list(nette_ctx.spec.imagenet_index)
    assert gen.latent_shape == (4, 8, 8)
    assert method.distill(ctx, ipc=1, seed=0).sha256() == dset.sha256()
