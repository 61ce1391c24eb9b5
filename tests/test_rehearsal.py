"""The ImageNet path end to end, in every CI: the commands of benchmarks/cpu_rehearsal.py (every diffusion and
soft-label method on `nette` at IPC 1, through the `ddbench run` command line) at a smaller shape.

What is real: the ILSVRC-2012 folder layout with nette's wnids (odd-sized JPEGs, a greyscale and a CMYK one), the
checked-in class list, a DiT checkpoint in the released plain-state-dict format on 32×32×4 latents, an
AutoencoderKL with sd-vae-ft-mse's layout saved with save_pretrained (256 px <-> 32×32 latents), 256 px
generation, 224 px evaluation, the fkd soft-label protocol for sre2l / cudd, the results store. What is small:
the DiT (depth 2, hidden 64, patch 2), the VAE's channel widths (sd-vae-ft-mse's own widths cost ~20 s per 256 px
decode on a loaded CPU core: 10 decodes per method would take the CI budget), the widths of IGD's surrogate and
ACS's discriminator, and every step count.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ddbench.cli import main
from ddbench.data.gates import ALLOW_ENV
from ddbench.data.spec import read_class_list
from ddbench.records.store import ResultStore

# The smaller shape of the guiding networks: IGD's ConvNet-6 surrogate and ACS's ResNetAP-10 discriminator at
# 256 px and full width are most of those methods' CPU time; narrower, they still run every phase at 256 px.
SMALL_SHAPE = {"igd": ["surrogate.arch_kw={width: 16}"], "acs": ["disc.arch_kw={width: 0.25}"]}
REHEARSAL_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "cpu_rehearsal.py"
# sd-vae-ft-mse's AutoencoderKL layout (4 down / 4 up blocks, 8x down-sampling, 4 latent channels) at small widths
SMALL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, act_fn="silu", layers_per_block=1,
                 block_out_channels=(8, 16, 16, 16), norm_num_groups=8, sample_size=256,
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def rehearsal_module():
    spec = importlib.util.spec_from_file_location("cpu_rehearsal", REHEARSAL_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tree(root: Path, wnids, n_train=3, n_val=1) -> Path:
    """ILSVRC-2012 layout, class-coloured images of odd sizes (> 256 px), the first two train files greyscale
    and CMYK as a few real ones are."""
    gen = torch.Generator().manual_seed(0)
    for k, wnid in enumerate(wnids):
        for split, n in (("train", n_train), ("val", n_val)):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (int(v) for v in torch.randint(257, 320, (2,), generator=gen))
                colour = torch.tensor([(k * 37) % 256, (k * 91) % 256, (k * 53) % 256], dtype=torch.float32)
                noise = torch.randn(h // 8, w // 8, 3, generator=gen) * 20
                small = (colour + noise).clamp(0, 255).to(torch.uint8).numpy()
                img = Image.fromarray(small, "RGB").resize((w, h))
                if split == "train" and k == 0 and i < 2:
                    img = img.convert("L" if i == 0 else "CMYK")
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{k * n_val + i + 1:08d}.JPEG"
                img.save(folder / name, quality=90)
    return root


def write_weights(root: Path) -> dict:
    """A small DiT as the released plain state dict, and the small-width AutoencoderKL as a diffusers folder."""
    from diffusers import AutoencoderKL

    from ddbench.diffusion import DiT

    torch.manual_seed(0)
    dit = DiT(input_size=32, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=1000)
    torch.save(dit.state_dict(), root / "DiT-small-256.pt")
    AutoencoderKL(**SMALL_VAE).save_pretrained(str(root / "vae"))
    return {"dit": root / "DiT-small-256.pt", "vae": root / "vae"}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    tree = write_tree(root / "imagenet", read_class_list("nette"))
    return rehearsal_module(), write_weights(root) | {"imagenet_root": tree}, root / "runs"


@pytest.mark.parametrize("method", ["dit", "mgd3", "minimax", "igd", "acs", "sre2l", "cudd"])
def test_rehearsal_command_records_a_result(rehearsal, method, monkeypatch, capsys):
    """One rehearsal command through the command line: exit 0 and a stored nette record with an accuracy, which
    says its data are not ILSVRC-2012's counts; the soft-label methods scored under fkd."""
    module, weights, out = rehearsal
    monkeypatch.setenv(ALLOW_ENV, "0")  # the gate stays closed unless the command's own flag opens it
    ipc, overrides = next((i, o) for m, i, o in module.REHEARSAL if m == method)
    code = main(module.command(method, ipc, overrides + SMALL_SHAPE.get(method, []), out, weights))
    assert code == 0, capsys.readouterr().err
    with ResultStore(out / "results.db") as store:
        records = store.query(method=method, dataset="nette")
    assert records, f"{method}: no record stored"
    rec = records[-1]
    assert rec["ipc"] == ipc and rec["acc_last"] is not None
    assert "nonstandard_subset" in json.dumps(rec)
    if method in module.SOFT_LABEL:
        assert rec["protocol"] == "fkd"


def test_rehearsal_without_the_flag_is_refused(rehearsal, monkeypatch, capsys):
    """The tree has 3 / 1 images per class: without --allow-nonstandard-subset the gate refuses it, with a
    message that names the flag (what the GPU rehearsal met before it passed the flag)."""
    module, weights, out = rehearsal
    monkeypatch.setenv(ALLOW_ENV, "0")
    args = [a for a in module.command("dit", 1, ["steps=4"], out, weights) if a != "--allow-nonstandard-subset"]
    assert main(args) == 2
    assert "--allow-nonstandard-subset" in capsys.readouterr().err
