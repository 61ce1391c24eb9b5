"""Loading DiT weights: the original facebookresearch checkpoints and diffusers folders.

Accepted by `load_dit(path)`:
  * an original checkpoint file (`.pt`/`.pth`/`.bin`/`.safetensors`): a plain state dict (the released
    `DiT-XL-2-256x256.pt`), or a training checkpoint dict with "ema" (preferred) or "model";
  * a diffusers `DiTTransformer2DModel` folder (`config.json` + `diffusion_pytorch_model.*`), or a pipeline
    folder holding one under `transformer/` (e.g. a saved `facebook/DiT-XL-2-256`).
The model config is read from the tensor shapes (`infer_dit_config`); diffusers names are converted to
the original ones and every tensor must be used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import torch

from ddbench.diffusion.dit import DIT_SIZES, DiT, get_2d_sincos_pos_embed
from ddbench.errors import DataError
from ddbench.safeload import load_tensors

DIT_ENV, DIT_FLAG, DIT_CARD_KEY = "DDBENCH_DIT", "--dit", "dit"

# ---------------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------------


def resolve_weights_path(path, *, what: str, flag: str, env: str, card_key: str | None = None) -> Path:
    """The user-given path, else the environment variable; a DataError saying how to supply it otherwise."""
    how = f"pass {flag} PATH or set {env}=PATH" + (f" (or `{card_key}:` in the method card)" if card_key else "")
    if path is None or str(path) == "":
        path = os.environ.get(env) or None
    if path is None:
        raise DataError(f"no {what} given; ddbench cannot download weights: {how}")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{what} not found at {path}; {how}")
    return path


# ---------------------------------------------------------------------------------------------------------
# Config inference (shapes only: works on meta tensors, allocates nothing)
# ---------------------------------------------------------------------------------------------------------


def default_num_heads(hidden_size: int) -> int:
    """Attention weights do not reveal the head count. The rule: the published sizes use their own count
    (S 384→6, B 768→12, L 1024→16, XL 1152→16: head dim 64, 64, 64, 72); any other width uses head dim 64."""
    for _, hidden, heads in DIT_SIZES.values():
        if hidden == hidden_size:
            return heads
    if hidden_size % 64:
        raise DataError(f"cannot guess the number of attention heads for hidden size {hidden_size} "
                        "(not a multiple of 64); pass num_heads= to load_dit")
    return hidden_size // 64


def infer_dit_config(state_dict: dict, num_heads: int | None = None) -> dict:
    """DiT constructor kwargs from an original-format state dict's tensor shapes (num_heads: see
    `default_num_heads` unless given)."""
    try:
        proj = state_dict["x_embedder.proj.weight"]            # D×C_in×p×p
        num_patches = state_dict["pos_embed"].shape[1]           # 1×T×D
        table = state_dict["y_embedder.embedding_table.weight"]  # (classes + null)×D
        final = state_dict["final_layer.linear.weight"]          # (p·p·C_out)×D
        fc1 = state_dict["blocks.0.mlp.fc1.weight"]              # (ratio·D)×D
    except KeyError as e:
        raise DataError(f"not a DiT state dict: tensor {e} is missing (expected facebookresearch/DiT names)") from None
    hidden, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = len({m.group(1) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.attn\.qkv\.weight$", k))})
    grid = round(num_patches**0.5)
    out_channels = final.shape[0] // (patch * patch)
    if grid * grid != num_patches or out_channels not in (in_channels, 2 * in_channels):
        raise DataError(f"unexpected DiT shapes: {num_patches} patches, {out_channels} output channels "
                        f"for {in_channels} input channels")
    return dict(input_size=grid * patch, patch_size=patch, in_channels=in_channels, hidden_size=hidden,
                depth=depth, num_heads=num_heads or default_num_heads(hidden), mlp_ratio=fc1.shape[0] / hidden,
                # every DiT checkpoint carries the null row used by CFG, so one row is not a class
                class_dropout_prob=0.1, num_classes=table.shape[0] - 1,
                learn_sigma=out_channels == 2 * in_channels)


# ---------------------------------------------------------------------------------------------------------
# diffusers <-> original names (diffusers scripts/convert_dit_to_diffusers.py, current layout)
# ---------------------------------------------------------------------------------------------------------

_TOP = {"pos_embed.proj": "x_embedder.proj", "proj_out_1": "final_layer.adaLN_modulation.1",
        "proj_out_2": "final_layer.linear"}
_BLOCK = {"norm1.linear": "adaLN_modulation.1", "attn1.to_out.0": "attn.proj", "ff.net.0.proj": "mlp.fc1",
          "ff.net.2": "mlp.fc2"}
_EMB = {"norm1.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "norm1.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
        "norm1.emb.class_embedder.embedding_table": "y_embedder.embedding_table"}


def is_diffusers_state_dict(sd: dict) -> bool:
    return "pos_embed.proj.weight" in sd or any(k.startswith("transformer_blocks.") for k in sd)


def diffusers_to_dit(sd: dict) -> dict:
    """diffusers DiTTransformer2DModel state dict -> original names (without pos_embed). Every tensor must
    be used; the per-block copies of the timestep/label embedder must be equal (diffusers keeps one per
    block, the original model shares one)."""
    sd, out = dict(sd), {}
    for k in list(sd):
        for pre, new in _TOP.items():
            if k.startswith(pre + "."):
                out[new + k[len(pre):]] = sd.pop(k)
    depth = len({m.group(1) for k in sd if (m := re.match(r"transformer_blocks\.(\d+)\.", k))})
    for i in range(depth):
        b = f"transformer_blocks.{i}."
        for suffix in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{suffix}"] = torch.cat([sd.pop(f"{b}attn1.to_{n}.{suffix}") for n in "qkv"])
            for old, new in _BLOCK.items():
                out[f"blocks.{i}.{new}.{suffix}"] = sd.pop(f"{b}{old}.{suffix}")
        for old, new in _EMB.items():
            for key in [k for k in sd if k.startswith(b + old + ".")]:
                name = new + key[len(b + old):]
                tensor = sd.pop(key)
                if name in out and not torch.equal(out[name], tensor):
                    raise DataError(f"diffusers checkpoint has different {old} weights in block {i} and block 0; "
                                    "ddbench's DiT (as the original) shares one embedder and cannot load it")
                out.setdefault(name, tensor)
    if sd:
        raise DataError(f"diffusers DiT checkpoint has {len(sd)} tensors with no DiT counterpart, "
                        f"e.g. {sorted(sd)[:3]}; it is not a DiTTransformer2DModel")
    return out


def dit_to_diffusers(sd: dict, depth: int) -> dict:
    """Original names -> diffusers DiTTransformer2DModel names (the embedder copied into every block)."""
    out = {}
    for old, new in _TOP.items():
        for suffix in ("weight", "bias"):
            out[f"{old}.{suffix}"] = sd[f"{new}.{suffix}"]
    for i in range(depth):
        b = f"transformer_blocks.{i}."
        for suffix in ("weight", "bias"):
            for n, part in zip("qkv", sd[f"blocks.{i}.attn.qkv.{suffix}"].chunk(3)):
                out[f"{b}attn1.to_{n}.{suffix}"] = part.clone()
            for old, new in _BLOCK.items():
                out[f"{b}{old}.{suffix}"] = sd[f"blocks.{i}.{new}.{suffix}"]
        for old, new in _EMB.items():
            for suffix in ("weight", "bias"):
                if f"{new}.{suffix}" in sd:
                    out[f"{b}{old}.{suffix}"] = sd[f"{new}.{suffix}"].clone()
    return out


def diffusers_config(cfg: dict) -> dict:
    """Our DiT config -> DiTTransformer2DModel config (for exporting)."""
    return dict(num_attention_heads=cfg["num_heads"], attention_head_dim=cfg["hidden_size"] // cfg["num_heads"],
                in_channels=cfg["in_channels"], out_channels=cfg["in_channels"] * (2 if cfg["learn_sigma"] else 1),
                num_layers=cfg["depth"], sample_size=cfg["input_size"], patch_size=cfg["patch_size"],
                num_embeds_ada_norm=cfg["num_classes"])


# ---------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------


def _read_tensors(file: Path) -> dict:
    """A state dict (or checkpoint dict) from .safetensors or a torch pickle (weights only; training
    checkpoints also hold an argparse.Namespace of arguments, which is allowed)."""
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return load_file(str(file))
        except Exception as e:  # noqa: BLE001 - any failure here means "this file is not a readable checkpoint"
            raise DataError(f"cannot read DiT weights {file}: not a safetensors file ({type(e).__name__})") from None
    try:  # memory-mapped: a 2.7 GB checkpoint is not copied before it is assigned to the model
        return load_tensors(file, "DiT weights", allow=[argparse.Namespace], mmap=True)
    except DataError:  # legacy (non-zip) files cannot be mapped; a bad file fails again, with its reason
        return load_tensors(file, "DiT weights", allow=[argparse.Namespace])


def _unwrap(obj, file: Path) -> tuple[dict, dict | None]:
    """(state dict, saved DiT config or None). A dict with "ema" (preferred) or "model" is a training
    checkpoint; ddbench's own checkpoints add "model_config" (the DiT kwargs, for the head count)."""
    config = None
    if isinstance(obj, dict):
        config = next((obj[k] for k in ("model_config", "config") if isinstance(obj.get(k), dict)), None)
    if isinstance(obj, dict) and "ema" in obj:  # the EMA weights are the ones sampled from
        obj = obj["ema"]
    elif isinstance(obj, dict) and "model" in obj:
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{file} holds no state dict (expected tensors by name, or a dict with 'ema'/'model')")
    return {k.removeprefix("module."): v for k, v in obj.items()}, config  # "module.": DDP-wrapped saves


def save_dit(path, model: DiT, ema: DiT | None = None, **extra) -> None:
    """Save in the original layout ({"model", "ema"} state dicts) plus "model_config", so load_dit needs no
    guess for the head count."""
    ckpt = {"model": model.state_dict(), "model_config": dict(model.config), **extra}
    if ema is not None:
        ckpt["ema"] = ema.state_dict()
    torch.save(ckpt, path)


def _read_diffusers_folder(folder: Path) -> tuple[dict, dict]:
    """(state dict, config.json) of a DiTTransformer2DModel folder; shards via the index file."""
    config = json.loads((folder / "config.json").read_text())
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).exists():
            return _read_tensors(folder / name), config
    index = next(iter(sorted(folder.glob("diffusion_pytorch_model*.index.json"))), None)
    if index is None:
        raise DataError(f"{folder} has a config.json but no diffusion_pytorch_model.safetensors/.bin weights")
    sd = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        sd.update(_read_tensors(folder / shard))
    return sd, config


def _read_any(path: Path) -> tuple[dict, dict | None, dict | None]:
    """(state dict in original names, diffusers config or None, saved ddbench config or None)."""
    saved = None
    if path.is_dir():
        folder = path / "transformer" if (path / "transformer" / "config.json").exists() else path
        if not (folder / "config.json").exists():
            raise DataError(f"{path} is a folder but neither a diffusers model folder (config.json) nor a "
                            "pipeline folder (transformer/config.json); give the .pt file or the model folder")
        sd, config = _read_diffusers_folder(folder)
    else:
        (sd, saved), config = _unwrap(_read_tensors(path), path), None
    if is_diffusers_state_dict(sd):
        pos = sd.pop("pos_embed.pos_embed", None)  # older diffusers saved the (fixed) table too
        sd = diffusers_to_dit(sd)
        if pos is not None:
            sd["pos_embed"] = pos
    return sd, config, saved


# ---------------------------------------------------------------------------------------------------------
# load_dit
# ---------------------------------------------------------------------------------------------------------


def load_dit(path=None, device="cpu", *, num_heads: int | None = None, dtype=torch.float32) -> DiT:
    """A DiT (eval mode) from an original checkpoint or a diffusers folder; path None -> $DDBENCH_DIT."""
    path = resolve_weights_path(path, what="DiT checkpoint", flag=DIT_FLAG, env=DIT_ENV, card_key=DIT_CARD_KEY)
    sd, dconfig, saved = _read_any(path)
    if "pos_embed" not in sd:  # diffusers computes the fixed table instead of storing it
        if dconfig is None:
            raise DataError(f"{path} holds diffusers-named DiT weights without their config.json (the input "
                            "size is not in the weights); give the model folder that holds both")
        hidden, patch = sd["x_embedder.proj.weight"].shape[0], sd["x_embedder.proj.weight"].shape[2]
        grid = dconfig["sample_size"] // patch
        sd["pos_embed"] = torch.from_numpy(get_2d_sincos_pos_embed(hidden, grid)).float()[None]
    if num_heads is None and saved is not None:  # shapes decide the sizes; the saved config the head count
        num_heads = saved.get("num_heads")
    if num_heads is None and dconfig is not None:
        num_heads = dconfig["num_attention_heads"]
    cfg = infer_dit_config(sd, num_heads)
    if saved is not None:
        cfg["class_dropout_prob"] = saved.get("class_dropout_prob", 0.1)
    if cfg["hidden_size"] % cfg["num_heads"]:
        raise DataError(f"{path}: hidden size {cfg['hidden_size']} is not divisible by {cfg['num_heads']} heads")
    with torch.device("meta"):  # no random init of 675 M parameters that are overwritten right away
        model = DiT(**cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise DataError(f"{path} does not fit a DiT of config {cfg}: missing {sorted(missing)[:4]}, "
                        f"unexpected {sorted(unexpected)[:4]} (a fine-tuned variant with extra parameters, "
                        "such as Minimax's γ scales, needs its own model class)")
    model.pos_embed.requires_grad_(False)
    return model.to(device=device, dtype=dtype).eval()
