"""The config hash of a result cell: everything besides the record key that can change its number.

A stored record answers a cell only when it carries the cell's hash (docs/results-schema.md, "The config hash"):
the method's card version and resolved config, the resolved protocol card, the dataset's identity, the content
of the user-supplied weights the cell reads, the precision the protocol and the method actually run in on the
device, and the numerics fingerprints of the protocol's and the method's code (ddbench.identity). `ddbench run`,
`evaluate` and the sweep workers compute it here, so the same cell gets the same hash whichever command made it.
"""
from __future__ import annotations

from pathlib import Path

from ..config import config_hash
from ..errors import DataError
from ..identity import dataset_identity, file_identity, method_weights, weight_paths


WEIGHT_FLAGS = {"dit": "--dit / DDBENCH_DIT", "vae": "--vae / DDBENCH_VAE", "teacher": "--teacher / DDBENCH_TEACHER"}


def used_weights(method_kind: str, method_cfg: dict, protocol, spec, options: dict) -> dict[str, str]:
    """The user-supplied weights this cell reads, by kind: the method's (`method_weights`) and the teacher of a
    soft-label protocol. A path given but not read is left out."""
    out = method_weights(method_kind, method_cfg, spec, options)
    if protocol.card.get("family") == "soft":
        out.update(weight_paths(["teacher"], method_cfg, protocol, options))
    return out


def weights_identity(method_kind: str, method_cfg: dict, protocol, spec, options: dict) -> dict:
    return {k: file_identity(p, options.get("cache_dir"))
            for k, p in used_weights(method_kind, method_cfg, protocol, spec, options).items()}


def check_weights(paths: dict[str, str]) -> None:
    """Every weights path a cell will read exists; a teacher file is read (weights-only) now, not after distilling."""
    from ..teachers.classifier import _state_dict

    for key, path in paths.items():
        if not Path(path).expanduser().exists():
            raise DataError(f"{key} weights {path} do not exist; give an existing file with {WEIGHT_FLAGS[key]}")
        if key == "teacher" and Path(path).is_file():
            _state_dict(Path(path).expanduser())


def protocol_identity(protocol, device) -> dict:
    """The protocol's part of a record's identity besides its card: the precision it trains in on `device` and
    the numerics fingerprint of its code."""
    from ..identity import numerics_fingerprint, numerics_of
    from ..protocol import resolved_precision

    return {"precision": resolved_precision(protocol.card, device),
            "numerics": numerics_fingerprint(numerics_of(protocol))}


def cell_config_hash(info: dict, protocol, spec, options: dict, device) -> str:
    """16 hex digits over everything besides the record key that can change a number: the method's card version
    and resolved config (`info`: method_version, method_config, method_kind), the inputs of its set
    (`info["set_inputs"]`: dataset, weights content, resolved precision, numerics; ddbench.identity.set_inputs),
    the resolved protocol card (its version included), its precision on `device` and its numerics fingerprint,
    the dataset identity, the weights read, and `info["set_sha256"]` for a set scored from a folder. Two
    records of one key and different hashes are two cells."""
    return config_hash({"method_version": str(info.get("method_version")), "method_config": info.get("method_config"),
                        "protocol": protocol.card, "dataset": dataset_identity(spec),
                        "weights": weights_identity(info.get("method_kind", ""), info.get("method_config") or {},
                                                    protocol, spec, options),
                        "set": info.get("set_sha256"), "set_inputs": info.get("set_inputs"),
                        "protocol_identity": protocol_identity(protocol, device)}, n=16)
