"""Shared pieces of the command line: the command registry and the options several commands take."""
from __future__ import annotations

import argparse
import os

from ..config import parse_int_list, parse_overrides
from ..errors import ConfigError

COMMANDS = {}  # name -> (add_arguments, handler)


def command(name: str, help: str):
    def wrap(fn):
        COMMANDS[name] = (help, fn)
        return fn
    return wrap


# ---------------------------------------------------------------------- shared options
def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--imagenet-root", default=os.environ.get("DDBENCH_IMAGENET_ROOT"),
                   help="ImageNet root with train/<wnid>/ and val/<wnid>/ (env DDBENCH_IMAGENET_ROOT)")
    p.add_argument("--data-root", default=None, help="folder of an IDX dataset (fashion, mnist)")
    p.add_argument("--cache-dir", default=None, help="cache for decoded data, teachers, generators (env DDBENCH_CACHE)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--allow-nonstandard-subset", action="store_true",
                   help="use an ImageNet subset whose per-class counts are not ILSVRC-2012's (e.g. the fastai "
                        "imagenette2 download); every record says so (env DDBENCH_ALLOW_NONSTANDARD_SUBSET=1)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dit", default=os.environ.get("DDBENCH_DIT"), help="DiT checkpoint (.pt) or diffusers folder (env DDBENCH_DIT)")
    p.add_argument("--vae", default=os.environ.get("DDBENCH_VAE"), help="AutoencoderKL folder, e.g. sd-vae-ft-mse (env DDBENCH_VAE)")
    p.add_argument("--teacher", default=os.environ.get("DDBENCH_TEACHER"), help="torchvision-format teacher weights (env DDBENCH_TEACHER)")


def add_models_at_once(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-at-once", type=positive_int, default=None, metavar="K",
                   help="evaluation networks trained together in one job (default: from the device's free "
                        "memory on CUDA, the measured CPU rule on CPU; 1 = one after the other)")


def options_of(args) -> dict:
    if getattr(args, "allow_nonstandard_subset", False):  # through the environment: sweep workers inherit it
        from ..data.gates import ALLOW_ENV

        os.environ[ALLOW_ENV] = "1"
    keys = ("imagenet_root", "data_root", "cache_dir", "dit", "vae", "teacher", "set_metrics", "models_at_once")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None)}


def int_list(text: str) -> list[int]:
    """'0,1,2' or '0-4' -> ints (argparse type: a bad list is a usage error naming the text)."""
    try:
        return parse_int_list(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    """argparse type of a count: a positive integer, else a usage error naming the text."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def split_overrides(items: list[str]) -> tuple[dict, dict]:
    """--set protocol.epochs=5 goes to the protocol card; anything else to the method config."""
    over = parse_overrides(items or [])
    protocol = over.get("protocol", {})
    if not isinstance(protocol, dict):
        raise ConfigError(f"--set protocol={protocol!r}: protocol settings are set one key at a time, e.g. "
                          "--set protocol.epochs=5; the protocol card itself is chosen with --protocol NAME")
    return {k: v for k, v in over.items() if k != "protocol"}, protocol
