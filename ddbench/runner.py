"""One run: dataset → method → distilled set → protocol → result records.

Every step is idempotent so a killed run resumes where it stopped:
- a distilled set lives at `<out>/distilled/<method>/<dataset>/ipc<K>-seed<S>-<key>` (key = hash of its
  identity: the method's resolved config, card version, IPC and seed, and its inputs — dataset identity, weights
  content, resolved precision, numerics code; ddbench.identity) and is reused when its manifest is there and
  the identity written in it is the one asked for;
- each (arch, eval seed) evaluation is written to the store as soon as it finishes, and skipped next time
  when its record is there under the same config hash (`cellhash.cell_config_hash`); `rerun=True`
  evaluates anew.
"""
from __future__ import annotations

import platform
import resource
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .engine import ddp
from .records.budget import record_budget
from .data import get_dataset, list_files, load_split
from .records.cellhash import cell_config_hash, check_weights, protocol_identity, used_weights
from .config import canonical_json, check_unique, config_hash, deep_merge
from .data.gates import check_class_order
from .distilled import MANIFEST, DistilledSet
from .errors import ConfigError, DataError, ResourceError
from .identity import set_inputs
from .method import Context, default_cache_dir, load_method
from .protocol import META_KEYS, load_protocol
from .records.store import ResultStore, code_version


@dataclass
class RunRequest:
    method: str
    dataset: str
    ipc: int
    protocol: str | None = None  # None: the dataset's default (dc for embedded data, idc for ImageNet subsets)
    archs: list[str] | None = None  # None: the protocol card's arch
    seeds: list[int] = field(default_factory=lambda: [0])
    eval_seeds: list[int] = field(default_factory=lambda: [0])
    method_overrides: dict = field(default_factory=dict)
    protocol_overrides: dict = field(default_factory=dict)
    out: Path = Path("runs")
    device: str = "auto"
    options: dict = field(default_factory=dict)  # imagenet_root, data_root, dit, vae, teacher, cache_dir
    rerun: bool = False  # evaluate every cell anew, replacing records of the same config hash


DEVICE_TYPES = ("cpu", "cuda")


def parse_device(name: str) -> torch.device | None:
    """`--device` as written -> torch.device (None for auto); refuses what is no cpu / cuda device at all."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ConfigError(f"--device {name!r} is not a device ddbench can use; use auto, cpu, cuda or cuda:N")
    return device


def resolve_device(name: str) -> torch.device:
    """`--device` -> a torch.device this machine has: auto, cpu, cuda or cuda:N with N below the visible count."""
    device = parse_device(name)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {name}: no CUDA device is visible; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name}: this machine has {count} visible CUDA device(s), "
                              f"cuda:0 to cuda:{count - 1}; choose one of those")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def hardware_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": torch.get_num_threads(),
            "machine": platform.machine(), "device": device_name(device)}
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def default_protocol(spec) -> str:
    return "idc" if spec.kind == "imagenet" else "dc"


class PhaseMeter:
    """Wall time and peak memory (MB) of one phase: CUDA allocator peak on GPU, process RSS peak on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:  # ru_maxrss is the process-lifetime peak (KiB on Linux): an upper bound for this phase
            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.seconds = time.perf_counter() - self.t0


REFERENCE = "reference"  # method kind of the whole-split reference (methods/whole.yaml)


def reference_settings(method: str, protocol_name: str) -> dict:
    """A reference method card's own protocol settings (`protocol: {<card>: {...}}`), between the protocol card
    and `--set`: the whole split trains fewer epochs than a 10-image set (methods/whole.yaml says why)."""
    from .method import method_card

    try:
        card = method_card(method)
    except ConfigError:  # an unknown method is reported once, by the method's own loading
        return {}
    if card.get("kind") != REFERENCE:
        return {}
    return dict((card.get("protocol") or {}).get(protocol_name) or {})


def check_ipc(spec, ipc: int, method_kind: str) -> None:
    if method_kind == REFERENCE:
        return
    if ipc <= 0:
        raise ConfigError(f"--ipc must be a positive number of images per class, got {ipc}")
    if method_kind != "selection":
        return
    _, labels = list_files(spec, "train")
    smallest = int(torch.bincount(labels, minlength=len(spec.classes)).min())
    if ipc > smallest:
        raise ConfigError(f"--ipc {ipc} is larger than the smallest class of {spec.name} ({smallest} training "
                          f"images); choose --ipc {smallest} or less")


def default_arch(protocol, spec) -> str:
    """The protocol card's network, or the one its family picks for this kind of dataset (soft protocols)."""
    arch = protocol.card.get("arch") or (protocol.arch_for(spec) if hasattr(protocol, "arch_for") else None)
    if not arch:
        raise ConfigError(f"protocol {protocol.card.get('name')} names no default network; pass --arch")
    return arch


def check_archs(archs: list[str]) -> None:
    """Fail on an unknown network before anything is distilled (a `timm:` name against timm's own list)."""
    from .nets.build import ARCHS, TIMM_PREFIX, check_timm_name

    for arch in archs:
        if arch.startswith(TIMM_PREFIX):
            check_timm_name(arch[len(TIMM_PREFIX):])
        else:
            ARCHS.get(arch)


def check_data(spec) -> None:
    """Read the headers of both splits (labels, folder structure; an embedded dataset's IDX files in full, a few
    MB) so that a corrupt or missing file fails before anything expensive runs, not after distilling."""
    from .data.embedded import read_idx, source_files

    for split in ("train", "test"):
        list_files(spec, split)
        for path in source_files(spec, split):
            read_idx(path)


def run(req: RunRequest, progress=None, log=print) -> list[dict]:
    """Execute a run request; returns the result records it produced or found in the store.

    Every input is checked before the first expensive step (distilling, the set metrics, evaluation): names,
    card values after `--set`, networks, data files, and the weights files given; a bad one leaves nothing behind.
    """
    check_unique(req.seeds, "--seeds")
    check_unique(req.eval_seeds, "--eval-seeds")
    device = resolve_device(req.device)
    distributed = ddp.setup()  # under torchrun: one process per GPU, rank 0 distils and writes the store
    if distributed and not ddp.is_main():
        log = lambda *_: None  # noqa: E731  (only rank 0 speaks)
    spec = get_dataset(req.dataset, imagenet_root=req.options.get("imagenet_root"),
                       data_root=req.options.get("data_root"))
    protocol_name = req.protocol or default_protocol(spec)
    protocol, method = load_configs(req, spec.name, protocol_name)
    if method.card.get("kind") == REFERENCE:  # the whole split: IPC does not apply, every run records ipc = 0
        req = replace(req, ipc=0)
    check_ipc(spec, req.ipc, method.card.get("kind", ""))
    archs = req.archs or [default_arch(protocol, spec)]
    check_archs(archs)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", ddp.env_world()[1])
    info = {"method_version": method.version, "method_config": method.cfg, "method_kind": method.card.get("kind", "")}
    check_weights(used_weights(info["method_kind"], method.cfg, protocol, spec, req.options))
    cache_dir = Path(req.options.get("cache_dir") or default_cache_dir())
    info["set_inputs"] = set_inputs(method, spec, device, req.options, cache_dir)
    cell_hash = cell_config_hash(info, protocol, spec, req.options, device)
    provenance = record_provenance(method.name, spec.name, protocol, req.method_overrides, req.protocol_overrides,
                                   info["set_inputs"], device)
    out = Path(req.out)
    store = ResultStore(out / "results.db")
    protocol.options = {"cache_dir": str(cache_dir), "teacher": req.options.get("teacher")}  # soft protocols' teacher
    train_split = {}

    def train():
        if "split" not in train_split:
            train_split["split"] = load_split(spec, "train", cache_dir=cache_dir / "data")
        return train_split["split"]

    ctx = Context(spec, device, cache_dir, train, progress, req.options)
    test = None
    records, prepared = [], {}
    for seed in req.seeds:
        keys = [dict(method=method.name, dataset=spec.name, ipc=req.ipc, seed=seed, protocol=protocol_name,
                     arch=a, eval_seed=e, config_hash=cell_hash) for a in archs for e in req.eval_seeds]
        todo = list(keys) if req.rerun else [k for k in keys if not store.has(k)]
        records += [r for k in keys if k not in todo for r in store.query(**k)]
        if not todo:
            log(f"seed {seed}: all {len(keys)} evaluations already recorded in {store.path} (config {cell_hash}); "
                "skipping (--rerun evaluates them anew)")
            continue
        if test is None:  # before distilling: a data file that cannot be read must not cost a distillation
            check_data(spec)
            test = load_split(spec, "test", cache_dir=cache_dir / "data")
        with ddp.main_first():  # rank 0 distils and saves; the other ranks then load the saved set
            dset, phases = distilled_set(method, ctx, req, spec, seed, out, prepared, log)
        info_out = {k: v for k, v in info.items() if k not in ("method_kind", "set_inputs")}
        records += evaluate_cells(dset, spec, protocol, todo, store, test, device, info_out, phases, log,
                                  replace=req.rerun, models_at_once=req.options.get("models_at_once"),
                                  progress=progress, provenance=provenance)
    store.close()
    return records


def load_configs(req: RunRequest, dataset: str, protocol_name: str):
    """(protocol, method) of the request; the errors of both configs are reported together, one line each."""
    problems, protocol, method = [], None, None
    try:  # a reference method's own protocol settings lie between the protocol card and --set
        protocol = load_protocol(protocol_name, deep_merge(reference_settings(req.method, protocol_name),
                                                           req.protocol_overrides))
    except ConfigError as e:
        problems.append(str(e))
    try:
        method = load_method_for_run(req.method, dataset, req.method_overrides, protocol)
    except ConfigError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("\n".join(problems))
    return protocol, method


def load_method_for_run(name: str, dataset: str, overrides: dict, protocol):
    """load_method; an unknown `--set` key also lists the protocol's keys (it may have been meant for them)."""
    try:
        return load_method(name, dataset, overrides)
    except ConfigError as e:
        if "has no key" not in str(e) or protocol is None:
            raise
        keys = sorted(k for k in protocol.card if k not in META_KEYS)
        raise ConfigError(f"{e} Protocol settings are set with --set protocol.KEY=VALUE; {protocol.name} has: "
                          f"{', '.join(keys)}.") from None


def record_provenance(method: str, dataset: str, protocol, method_overrides: dict | None,
                      protocol_overrides: dict | None, inputs: dict | None, device) -> dict:
    """What every record keeps under `extra` besides the protocol's fields (docs/results-schema.md, "Identity"):
    `identity` (the set's inputs and the protocol's precision and numerics fingerprint that its config hash
    covers), `overrides` (the `--set` / grid values it ran with) and `card_config_hash` (config.config_hash of the
    method's and the protocol's own card config at the time: the leaderboard names a variant against it after
    a card bump)."""
    return {"identity": {"set": inputs, "protocol": protocol_identity(protocol, device)},
            "overrides": {"method": method_overrides or {}, "protocol": protocol_overrides or {}},
            "card_config_hash": {"method": method_card_hash(method, dataset),
                                 "protocol": protocol_card_hash(protocol.name)}}


def method_card_hash(method: str, dataset: str) -> str | None:
    """config_hash of the method card's own resolved config on `dataset`; None for an external set."""
    from .errors import DDBenchError
    from .method import resolve_method_config

    try:
        return config_hash(resolve_method_config(method, dataset)[1])
    except DDBenchError:
        return None


def protocol_card_hash(name: str) -> str:
    """config_hash of the protocol card without overrides."""
    return config_hash(load_protocol(name).card)


def evaluate_cells(dset, spec, protocol, keys, store, test, device, info, phases, log, replace=False,
                   models_at_once=None, progress=None, provenance: dict | None = None) -> list[dict]:
    """Evaluate `dset` for each record key (config_hash included) and store each record as soon as it exists;
    `replace` overwrites a stored record of the same key (--rerun); `provenance` (record_provenance) goes into
    every record's `extra`.

    The eval seeds of one arch are trained together, `models_at_once` networks per job (None: chosen from the
    device, see plan_models_at_once); each model's record is written when its job ends. A job that runs out of
    memory is retried with half as many networks (fewer_models); its records say so.
    """
    sha = dset.provenance.get("sha256") or dset.sha256()
    records, budget = [], None
    for arch in dict.fromkeys(k["arch"] for k in keys):
        cells = [k for k in keys if k["arch"] == arch]
        planned = at_once = plan_models_at_once(protocol, dset, spec, arch, device, models_at_once, len(cells), log)
        while cells:
            job, oom = cells[:at_once], None
            try:
                with PhaseMeter(device) as meter:
                    results = protocol.evaluate_many(dset, spec, test, arch, [k["eval_seed"] for k in job], device,
                                                     progress=progress)
            except Exception as e:  # noqa: BLE001 - only an out-of-memory error is handled; the rest re-raised
                if not is_out_of_memory(e):
                    raise
                oom = " ".join(str(e).split())[:200]
            if oom is not None:  # outside the except block: the traceback's tensors are gone before freeing
                at_once = fewer_models(at_once, oom, arch, device, protocol, log)
                continue
            cells = cells[len(job):]
            budget = budget or record_budget(dset, protocol, spec, device)  # once per set: bytes and teacher size
            for key, result in zip(job, results):
                record = _record(key, result, meter.peak_mb, info, protocol, sha, dset, device, phases, spec)
                record["extra"] = {**(record["extra"] or {}), "budget": budget, **(provenance or {})}
                if at_once < planned:  # the K that ran, next to the K the plan chose
                    record["extra"].update(models_at_once=len(job), models_at_once_planned=planned)
                if ddp.is_main():
                    store.add(record, replace=replace)
                records.append(record)
                log(f"{arch} eval-seed {key['eval_seed']}: last {result.acc_last:.2f}%  best {result.acc_best:.2f}%")
    return records


def plan_models_at_once(protocol, dset, spec, arch, device, requested, n_models, log) -> int:
    """How many networks of `arch` one job trains: train_many.models_at_once (on CUDA from the protocol's planned
    bytes per network), or 1 for a network with random layers (dropout: vmap cannot give each model its own
    lone-run draws), said in one log line."""
    from .nets.build import build_net
    from .engine.train_many import models_at_once, random_layers

    planned = getattr(protocol, "step_bytes", None) if device.type == "cuda" and requested is None else None
    k = models_at_once(requested, device, n_models, planned(dset, spec, arch) if planned else None)
    if k > 1:
        drawn = random_layers(build_net(arch, spec.num_classes, spec.channels, spec.resolution))
        if drawn:
            log(f"{arch} has random layers ({', '.join(drawn[:3])}{', ...' if len(drawn) > 3 else ''}): its "
                f"{n_models} eval seeds train one at a time, not {k} together")
            return 1
    return k


OOM_MESSAGES = ("out of memory", "not enough memory", "DefaultCPUAllocator: can't allocate")


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the RuntimeError of an allocation that failed (CPU allocator, cuDNN, MPS)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom_type) or isinstance(e, RuntimeError) and any(m in str(e) for m in OOM_MESSAGES)


def fewer_models(k: int, error: str, arch, device, protocol, log) -> int:
    """After an out-of-memory job of k networks: free what it held and return k // 2; at k = 1, a clear error."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if k == 1:
        raise ResourceError(f"out of memory training one {arch} network under protocol {protocol.card.get('name')} "
                            f"on {device} ({error}); lower the batch size (--set protocol.batch_size=N) or use a "
                            "device with more free memory")
    log(f"{arch}: out of memory with {k} networks at once; retrying with {k // 2} ({error})")
    return k // 2


def _record(key, result, peak_mb, info, protocol, sha, dset, device, phases, spec) -> dict:
    return {**key, "acc_last": result.acc_last, "acc_best": result.acc_best, "best_epoch": result.best_epoch,
            **info, "protocol_version": protocol.card.get("version", 1), "protocol_config": protocol.card,
            "distilled_sha256": sha, "distilled_path": str(dset.provenance.get("path", "")),
            "code_version": code_version(), "device": device_name(device), "hardware": hardware_info(device),
            "timings": {**phases["timings"], "evaluate": result.seconds},
            "peak_mem": {**phases["peak_mem"], "evaluate": max(result.peak_mem_mb, peak_mb)},
            "curve": result.curve, "extra": _extra(result.extra, phases, spec)}


def _extra(extra: dict | None, phases: dict, spec) -> dict | None:
    """The protocol's extra fields plus the set's metrics (when computed) and why the data are nonstandard."""
    if phases.get("set_metrics"):
        extra = {**(extra or {}), "set_metrics": phases["set_metrics"]}
    if spec.nonstandard:  # allowed by --allow-nonstandard-subset: every record says so (ddbench.data.gates)
        extra = {**(extra or {}), "nonstandard_subset": spec.nonstandard}
    return extra


def evaluate_folder(path: Path, dataset: str, name: str | None, protocol_name: str | None, archs, eval_seeds,
                    protocol_overrides: dict, out: Path, device: str, options: dict, log=print,
                    rerun: bool = False) -> list[dict]:
    """Score an existing folder of distilled images (a ddbench set or any ImageFolder) and record it.

    The config hash covers the set's content (sha256), not the folder's path: the same set scored from another
    place answers from the store, a changed set is evaluated anew."""
    check_unique(eval_seeds, "--eval-seeds")
    dev = resolve_device(device)
    spec = get_dataset(dataset, imagenet_root=options.get("imagenet_root"), data_root=options.get("data_root"))
    protocol_name = protocol_name or default_protocol(spec)
    protocol = load_protocol(protocol_name, protocol_overrides)
    archs = archs or [default_arch(protocol, spec)]
    check_archs(archs)
    check_weights(used_weights("", {}, protocol, spec, options))
    dset = DistilledSet.load(path, classes=spec.classes, size=spec.resolution, channels=spec.channels)
    check_class_order(dset.classes, spec, f"distilled set {path}")
    dset.provenance["path"] = str(path)
    cell_hash = cell_config_hash({"method_version": 0, "method_config": {}, "set_sha256": dset.sha256()},
                                 protocol, spec, options, dev)
    check_data(spec)
    cache_dir = Path(options.get("cache_dir") or default_cache_dir())
    protocol.options = {"cache_dir": str(cache_dir), "teacher": options.get("teacher")}
    test = load_split(spec, "test", cache_dir=cache_dir / "data")
    method = name or set_name(dset, path)
    keys = [dict(method=method, dataset=spec.name, ipc=dset.ipc, seed=0, protocol=protocol_name, arch=a, eval_seed=e,
                 config_hash=cell_hash) for a in archs for e in eval_seeds]
    with ResultStore(Path(out) / "results.db") as store:
        todo = list(keys) if rerun else [k for k in keys if not store.has(k)]
        done = [r for k in keys if k not in todo for r in store.query(**k)]
        info = {"method_version": 0, "method_config": {"external_path": str(path)}}
        phases = {"timings": {}, "peak_mem": {}}
        provenance = record_provenance(method, spec.name, protocol, {}, protocol_overrides, None, dev)
        return done + evaluate_cells(dset, spec, protocol, todo, store, test, dev, info, phases, log, replace=rerun,
                                     models_at_once=options.get("models_at_once"), provenance=provenance)


def set_name(dset: DistilledSet, path: Path) -> str:
    """The method name an evaluated set is filed under without --name: from its manifest's provenance when it
    has one ('mgd3-v3-seed0': method, card version, seed), else 'external:<folder name>'. Never a bare card
    name: a set scored from a folder is not a `ddbench run` cell of that card, and its leaderboard row says so."""
    prov = dset.provenance
    if prov.get("method") and prov.get("version") is not None and prov.get("seed") is not None:
        return f"{prov['method']}-v{prov['version']}-seed{prov['seed']}"
    return f"external:{Path(path).resolve().name}"


def distilled_folder(out: Path, method: str, dataset: str, ipc: int, seed: int, key: str) -> Path:
    """Where the set of (method config `key`, dataset, ipc, seed) is kept under a run directory."""
    return Path(out) / "distilled" / method / dataset.replace(":", "_").replace("/", "_") / f"ipc{ipc}-seed{seed}-{key}"


def distilled_set(method, ctx, req, spec, seed, out, prepared, log):
    """Load the cached set of this identity or produce and save it. Returns (set, phase stats).

    The identity (method.set_identity: config, card version, IPC, seed, and ddbench.identity.set_inputs) names
    the folder and is written into the set's provenance; a cached set whose stored identity is another (made
    from other weights, data, precision or code) is distilled anew, with one line saying why."""
    inputs = set_inputs(method, spec, ctx.device, ctx.options, ctx.cache_dir)
    identity = method.set_identity(req.ipc, seed, inputs)
    folder = distilled_folder(out, method.name, spec.name, req.ipc, seed, method.distill_key(req.ipc, seed, inputs))
    if (folder / MANIFEST).exists():
        try:
            dset = DistilledSet.load(folder)
            check_class_order(dset.classes, spec, f"cached set {folder}")  # made under another class list
            if spec.kind == "embedded" and dset.images.shape[-1] != spec.resolution:  # e.g. 32-px digits of old
                raise DataError(f"its images are {dset.images.shape[-1]} px, {spec.name} is {spec.resolution} px now")
            stale = identity_diff(dset.provenance.get("identity"), identity)
            if stale:
                raise DataError(f"it was made from other inputs ({stale})")
            log(f"seed {seed}: reusing distilled set {folder}")
            dset.provenance["path"] = str(folder)
            return dset, {"timings": dset.provenance.get("phase_seconds", {}),
                          "peak_mem": dset.provenance.get("phase_peak_mb", {}),
                          "set_metrics": _set_metrics(method, dset, folder, ctx, log)}
        except DataError as e:
            log(f"seed {seed}: cached set unusable ({e}); distilling again")
    timings, peaks = {}, {}
    if "done" not in prepared:
        with PhaseMeter(ctx.device) as m:
            method.prepare(ctx)
        prepared["done"] = True
        timings["prepare"], peaks["prepare"] = m.seconds, m.peak_mb
    with PhaseMeter(ctx.device) as m:
        dset = method.distill(ctx, req.ipc, seed)
    timings["distill"], peaks["distill"] = m.seconds, m.peak_mb
    dset.provenance.update({"phase_seconds": timings, "phase_peak_mb": peaks, "dataset": spec.name,
                            "code_version": code_version(), "identity": identity})
    dset.provenance["sha256"] = dset.save(folder)
    dset.provenance["path"] = str(folder)
    log(f"seed {seed}: distilled {len(dset)} images in {m.seconds:.1f}s -> {folder}")
    return dset, {"timings": timings, "peak_mem": peaks, "set_metrics": _set_metrics(method, dset, folder, ctx, log)}


def identity_diff(stored, wanted: dict) -> str:
    """"" when a cached set's stored identity is the one wanted, else which parts differ (for the log line)."""
    if not isinstance(stored, dict):
        return "its manifest holds no identity"
    if canonical_json(stored) == canonical_json(wanted):
        return ""
    parts = []
    for k in sorted(set(stored) | set(wanted)):
        a, b = stored.get(k), wanted.get(k)
        if k == "inputs" and isinstance(a, dict) and isinstance(b, dict):
            parts += [f"inputs.{i}" for i in sorted(set(a) | set(b))
                      if canonical_json(a.get(i)) != canonical_json(b.get(i))]
        elif canonical_json(a) != canonical_json(b):
            parts.append(k)
    return "differs in " + ", ".join(parts)


def _set_metrics(method, dset, folder, ctx, log) -> dict | None:
    """Diversity / representativeness / coverage / MMD of the set (ddbench.metrics), kept beside it; none for
    the whole-split reference (it is the real distribution those metrics compare a set with)."""
    from .metrics import recorded_set_metrics

    if method.card.get("kind") == REFERENCE:
        return None

    return recorded_set_metrics(dset, folder, ctx.spec, ctx.train, ctx.device, ctx.cache_dir,
                                ctx.options.get("set_metrics"), log, ctx.progress)
