"""`ddbench generator train|quality`: the self-trained generator of a dataset (docs/generators.md).

    ddbench generator train --dataset fashion --config cpu            # trains once, cached; resumes if killed
    ddbench generator quality --dataset digits --config cpu --json q.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import add_data_options, command, options_of
from ..config import parse_overrides
from ..errors import ConfigError


@command("generator", "train the self-trained generator of a dataset, or measure its sample quality")
def cmd_generator(p: argparse.ArgumentParser):
    p.add_argument("action", choices=["train", "quality"])
    p.add_argument("--dataset", required=True)
    p.add_argument("--config", default="cpu", help="preset: tiny, cpu or gpu (ddbench/diffusion/train.py:PRESETS)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="generator config override, e.g. train_steps=5000 or hidden_size=192")
    p.add_argument("--steps", type=int, default=None, help="quality: sampling steps (default: the dit card's)")
    p.add_argument("--cfg-scale", type=float, default=None, help="quality: CFG scale (default: the dit card's)")
    p.add_argument("--sampler", default=None, choices=["ddpm", "ddim"], help="quality: sampler (default: the card's)")
    p.add_argument("--n-per-class", type=int, default=100, help="quality: samples per class")
    p.add_argument("--seed", type=int, default=0, help="quality: sampling seed")
    p.add_argument("--json", default=None, help="quality: also write the figures to this JSON file")
    add_data_options(p)

    def handler(args):
        from ..data import get_dataset, load_split
        from ..diffusion.generator import generator_quality, load_generator, trained_generator_path
        from ..method import Context, default_cache_dir, resolve_method_config
        from ..progress import progress_bar
        from ..runner import resolve_device

        opts = options_of(args)
        spec = get_dataset(args.dataset, imagenet_root=opts.get("imagenet_root"), data_root=opts.get("data_root"))
        if spec.kind == "imagenet":
            raise ConfigError(f"{spec.name} is an ImageNet subset: it uses the pretrained DiT-XL/2 (--dit, --vae); "
                              "`ddbench generator` trains generators for the other datasets only")
        cache = Path(opts.get("cache_dir") or default_cache_dir())
        gen_cfg = {"preset": args.config, **parse_overrides(args.set)}
        with progress_bar() as progress:
            split = {}

            def train():
                if "train" not in split:
                    split["train"] = load_split(spec, "train", cache_dir=cache / "data")
                return split["train"]

            ctx = Context(spec, resolve_device(args.device), cache, train, progress, opts)
            path = trained_generator_path(ctx, gen_cfg, log=progress.console.print)
            print(f"generator for {spec.name} ({args.config}): {path}")
            if args.action == "quality":
                _, card_cfg = resolve_method_config("dit", spec.name)
                test = load_split(spec, "test", cache_dir=cache / "data")
                q = generator_quality(load_generator(ctx, {"generator": gen_cfg}), spec, train(), test,
                                      n_per_class=args.n_per_class, steps=args.steps or card_cfg["steps"],
                                      cfg=card_cfg["cfg_scale"] if args.cfg_scale is None else args.cfg_scale,
                                      sampler=args.sampler or card_cfg["sampler"], seed=args.seed, cache_dir=cache,
                                      track=ctx.track)
                q.update(generator=str(path), dataset=spec.name, config=args.config, overrides=gen_cfg)
                print_quality(q, spec.classes)
                if args.json:
                    Path(args.json).write_text(json.dumps(q, indent=1))
    return handler


def print_quality(q: dict, classes) -> None:
    print(f"judge ({q['judge']['arch']}) on the real test split: {q['judge_test_acc']:.2f}%")
    print(f"samples ({q['n_per_class']}/class, {q['sampler']} {q['steps']} steps, cfg {q['cfg']}): "
          f"judge accuracy {q['acc']:.2f}%  FD {q['fd']:.2f}  (real train images: FD {q['fd_real']:.2f})  "
          f"sampling {q['sampling_seconds']:.0f}s")
    print("per class: " + "  ".join(f"{c} {a:.0f}" for c, a in zip(classes, q["per_class"])))
