"""The hard-label protocol family: cross-entropy on the distilled images' own labels.

Cards: `dc` (DC/DSA/DM reference code for 28-32 px data: ConvNet-3, SGD 0.01, 300 epochs, lr ×0.1 at half),
`dc_dsa` (the same with DSA augmentation, 1000 epochs) and `idc` (IDC → Minimax → MGD3 evaluator for ImageNet
subsets at 224 px: epochs by IPC, lr/wd/batch by class count, MultiStep ⌊2E/3⌋ ⌊5E/6⌋ γ 0.2, RRC + flip +
jitter + lighting + CutMix). Facts: shared/reference/dc-protocol.md and protocol-facts §2; values and sources
of each card: docs/protocols.md.

One evaluation = one freshly initialised network (seeded by `seed`) trained on the whole distilled set on the
device and tested on the test split at several points; `acc_last` is the final epoch (honest), `acc_best`
the best point (what the papers report).
"""
from __future__ import annotations

import torch

from ddbench.identity import TRAIN_NUMERICS
from ddbench.engine.augment import DSA_OPS, DSAugment, IDCAugment, Normalize, resize_center_crop, to_float, to_uint8
from ddbench.errors import ConfigError, DataError
from ddbench.protocol import PRECISIONS, EvalResult, Protocol, ResourceMeter, resolved_precision
from ddbench.schema import Section, choice
from ddbench.engine.ddp import maybe_wrap_ddp
from ddbench.engine.train import OPTIMIZER_RULES, SCHEDULE_RULES, CutMixCE
from ddbench.engine.train_many import evaluate_accuracies, step_bytes, train_classifiers

AUGMENTS = ("none", "dsa", "idc")
MIXES = ("none", "cutmix")

# ---------------------------------------------------------------------------------------------------------
# Rules that turn a card plus (IPC, class count) into a training plan
# ---------------------------------------------------------------------------------------------------------


def idc_epochs(ipc: int, num_classes: int, table: list, scale_100_classes: bool = True) -> int:
    """IDC/Minimax `ipc_epoch`: epochs from the first table row [max_ipc, epochs] with ipc ≤ max_ipc (null = ∞).

    With exactly 100 classes the epochs are ×2/3, rounded down to a multiple of 100 (protocol-facts §2.3).
    """
    for bound, epochs in table:
        if bound is None or ipc <= bound:
            break
    else:
        raise ConfigError(f"epochs_by_ipc has no row for IPC {ipc}; end the table with [null, <epochs>]")
    if scale_100_classes and num_classes == 100:
        epochs = int((2 / 3 * epochs) // 100 * 100)  # the reference's float arithmetic, kept exactly
    return int(epochs)


def class_hparams(num_classes: int, card: dict) -> dict:
    """lr, weight_decay, batch_size: the card's base values, or `large_classes` when num_classes > its threshold.

    Minimax/MGD3 use `nclass > 100` (so ImageNet-100 keeps the small-class values); IDC used `nclass >= 100`,
    i.e. threshold 99.
    """
    hp = {"lr": card["optimizer"]["lr"], "weight_decay": card["optimizer"].get("weight_decay", 0.0),
          "batch_size": card["batch_size"]}
    large = card.get("large_classes")
    if large and num_classes > int(large["threshold"]):
        hp.update({k: large[k] for k in ("lr", "weight_decay", "batch_size") if k in large})
    return hp


def resolve_schedule(schedule: dict, epochs: int) -> dict:
    """`milestone_fractions: [[2, 3], [5, 6]]` -> `milestones: [⌊2E/3⌋, ⌊5E/6⌋]`; others pass through."""
    out = dict(schedule or {"name": "constant"})
    fractions = out.pop("milestone_fractions", None)
    if fractions is not None:
        out["milestones"] = [int(a) * epochs // int(b) for a, b in fractions]
    return out


def check_card(card: dict) -> None:
    for key, allowed in (("augment", AUGMENTS), ("mix", MIXES)):
        if card.get(key) not in allowed:
            raise ConfigError(f"protocol {card.get('name')}: {key} {card.get(key)!r} is not one of "
                              f"{', '.join(allowed)}")
    if card.get("epochs") is None and not card.get("epochs_by_ipc"):
        raise ConfigError(f"protocol {card.get('name')}: set `epochs` or an `epochs_by_ipc` table")
    if int(card.get("eval_points") or 0) < 1:
        raise ConfigError(f"protocol {card.get('name')}: eval_points must be ≥ 1 (got {card.get('eval_points')!r})")


# ---------------------------------------------------------------------------------------------------------
# Data preparation (once per evaluation, on the device)
# ---------------------------------------------------------------------------------------------------------


def to_resolution(images: torch.Tensor, size: int, device, chunk: int = 256) -> torch.Tensor:
    """uint8 N×C×H×W on `device` at size×size: Resize(size) + CenterCrop(size) when needed, requantised to uint8
    as the reference's PIL transform would store it."""
    if images.shape[-2:] == (size, size):
        return images.to(device)
    parts = [to_uint8(resize_center_crop(to_float(images[i:i + chunk].to(device)), size))
             for i in range(0, len(images), chunk)]
    return torch.cat(parts)


def aligned_labels(dset, spec) -> torch.Tensor:
    """dset labels as positions in spec.classes (a set saved with another class order is remapped by name)."""
    labels = torch.as_tensor(dset.labels, dtype=torch.long)
    classes = tuple(getattr(dset, "classes", None) or spec.classes)
    if classes == tuple(spec.classes):
        return labels
    missing = [c for c in classes if c not in spec.classes]
    if missing:
        raise DataError(f"the distilled set has classes {missing[:5]} that dataset {spec.name} does not have; "
                        f"evaluate it with the dataset it was made from")
    lut = torch.tensor([spec.classes.index(c) for c in classes], dtype=torch.long)
    return lut[labels]


# ---------------------------------------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------------------------------------


class HardLabelProtocol(Protocol):
    numerics = ("ddbench.protocols.hard", *TRAIN_NUMERICS)
    family = "hard"
    defaults = {
        "arch": "convnet3", "resolution": None, "epochs": None, "epochs_by_ipc": None,
        "scale_epochs_100_classes": False, "batch_size": 256, "large_classes": None,
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "constant"}, "augment": "none",
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
        "rrc_scale": [0.5, 1.0], "rrc_ratio": [0.75, 1.3333333333333333], "flip": 0.5, "jitter": 0.4,
        "lighting_std": 0.1, "mix": "none", "cutmix_beta": 1.0, "cutmix_p": 1.0, "eval_points": 10,
        "eval_batch_size": 256, "precision": "bf16", "channels_last": True,
    }
    schema = {
        "arch": "arch", "resolution": "int>=1?", "epochs": "int>=1?",
        "epochs_by_ipc": "list[tuple[int>=1?, int>=1]]?",  # rows [largest IPC (null = any), epochs]
        "scale_epochs_100_classes": "bool", "batch_size": "int>=1",
        "large_classes": Section({"threshold": "int>=0", "lr": "float>=0", "weight_decay": "float>=0",
                                  "batch_size": "int>=1"}, nullable=True),
        "optimizer": OPTIMIZER_RULES, "schedule": SCHEDULE_RULES, "augment": choice(AUGMENTS),
        "dsa_strategy": f"ops[{'|'.join(DSA_OPS)}]", "rrc_scale": "tuple[prob, prob]",
        "rrc_ratio": "tuple[float>0, float>0]", "flip": "prob", "jitter": "float>=0", "lighting_std": "float>=0",
        "mix": choice(MIXES), "cutmix_beta": "float>0", "cutmix_p": "prob", "eval_points": "int>=1",
        "eval_batch_size": "int>=1", "precision": choice(PRECISIONS), "channels_last": "bool",
    }

    def __init__(self, card: dict):
        super().__init__(card)
        check_card(card)

    def plan(self, n_images: int, num_classes: int) -> dict:
        """The resolved training plan for a set of n_images over num_classes (recorded in EvalResult.extra)."""
        c = self.card
        ipc = max(1, n_images // num_classes)
        epochs = c["epochs"]
        if epochs is None:
            epochs = idc_epochs(ipc, num_classes, c["epochs_by_ipc"], c["scale_epochs_100_classes"])
        hp = class_hparams(num_classes, c)
        return {"ipc": ipc, "epochs": int(epochs), "batch_size": int(hp["batch_size"]),
                "optimizer": {**c["optimizer"], "lr": hp["lr"], "weight_decay": hp["weight_decay"]},
                "schedule": resolve_schedule(c["schedule"], int(epochs)),
                "eval_every": max(1, int(epochs) // int(c["eval_points"]))}

    def train_augment(self, spec, size: int, seed: int):
        c = self.card
        if c["augment"] == "idc":
            return IDCAugment(size, spec.mean, spec.std, scale=c["rrc_scale"], ratio=c["rrc_ratio"],
                              flip=c["flip"], jitter=c["jitter"], lighting_std=c["lighting_std"])
        if c["augment"] == "dsa":
            return DSAugment(spec.mean, spec.std, c["dsa_strategy"], seed=seed)
        return Normalize(spec.mean, spec.std)

    def evaluate(self, dset, spec, test, arch: str | None, seed: int, device) -> EvalResult:
        return self.evaluate_many(dset, spec, test, arch, [seed], device)[0]

    def evaluate_many(self, dset, spec, test, arch: str | None, seeds: list[int], device,
                      progress=None) -> list[EvalResult]:
        """One result per evaluation seed; the networks of all `seeds` are trained together (train_classifiers).

        Each network is initialised and augmented from its own seed exactly as a lone evaluation would be, so
        the result for a seed does not depend on which other seeds share the job (within float tolerance).
        """
        from ddbench.nets.build import build_net  # imported here: listing protocols must not import every network

        device = torch.device(device)
        c, arch = self.card, arch or self.card["arch"]
        size = int(c["resolution"] or spec.resolution)
        if dset.images.shape[1] != spec.channels:
            raise DataError(f"the distilled set has {dset.images.shape[1]}-channel images but {spec.name} has "
                            f"{spec.channels}; evaluate it with the dataset it was made from")
        with ResourceMeter(device) as meter:
            labels = aligned_labels(dset, spec)
            plan = self.plan(len(labels), spec.num_classes)
            train_x = to_resolution(dset.images, size, device)
            test_x, test_y = to_resolution(test.images, size, device), test.labels.to(device)
            gens = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
            nets = [maybe_wrap_ddp(build_net(arch, spec.num_classes, spec.channels, size, generator=g), device)
                    for g in gens]
            augments = [self.train_augment(spec, size, int(torch.randint(0, 2**62, (1,), generator=g)))
                        for g in gens]
            test_tf = Normalize(spec.mean, spec.std)  # the test split is already Resize + CenterCrop at `size`

            amp = resolved_precision(c, device) == "bf16"  # the value the record's identity hashes

            def eval_fn(models):
                return evaluate_accuracies(models, test_x, test_y, test_tf, c["eval_batch_size"], device,
                                           amp, c["channels_last"])

            loss = CutMixCE(c["cutmix_beta"], c["cutmix_p"]) if c["mix"] == "cutmix" else "ce"
            hists = train_classifiers(
                nets, train_x, labels, epochs=plan["epochs"], batch_size=plan["batch_size"],
                optimizer=plan["optimizer"], schedule=plan["schedule"], augments=augments, loss=loss,
                eval_fn=eval_fn, eval_every=plan["eval_every"], generators=gens, device=device, amp=amp,
                channels_last=c["channels_last"], progress=progress, description=f"{self.name} {arch}")
        return [self._result(hist, plan, arch, size, len(labels), meter, len(seeds)) for hist in hists]

    def step_bytes(self, dset, spec, arch: str | None) -> int:
        """Planned bytes of one network's training step on this set (what sizes a multi-model job)."""
        from ddbench.nets.build import build_net

        arch = arch or self.card["arch"]
        size = int(self.card["resolution"] or spec.resolution)
        batch = min(self.plan(len(dset.images), spec.num_classes)["batch_size"], len(dset.images))
        return step_bytes(build_net(arch, spec.num_classes, spec.channels, size), (batch, spec.channels, size, size))

    @staticmethod
    def _result(hist, plan, arch, size, n_train, meter, k) -> EvalResult:
        extra = {"plan": plan, "arch": arch, "resolution": size, "n_train": n_train,
                 "train_loss_last": hist.train_loss[-1], "train_acc_last": hist.train_acc[-1],
                 "train_seconds": hist.seconds}
        if k > 1:  # the job's wall time is shared by its k models
            extra["models_at_once"] = k
        return EvalResult.from_curve(hist.curve, meter.seconds / k, meter.peak_mb, extra)


PROTOCOL = HardLabelProtocol
