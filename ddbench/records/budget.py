"""What evaluating a distilled set needs besides the student network, measured where records are built.

`extra["budget"]` of a result record (written by `runner.evaluate_cells`):
- `set_bytes`: the distilled set as stored — every file of its folder (images, and `soft_labels.pt` when the
  set carries its own labels) except ddbench's bookkeeping (`manifest.json`, `set_metrics.json`);
- `teacher_params`, `teacher_bytes`: for a soft-label protocol, the teacher that must be shipped with the set
  to label it (parameters; bytes of its state dict as held in memory, buffers included).
Stored soft labels (`fkd`) are counted by the protocol itself (`extra["soft_label_bytes"]`). Read by the
budget tables: `ddbench.leaderboard.budget`, docs/leaderboards.md.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..distilled import MANIFEST

BOOKKEEPING = {MANIFEST, "set_metrics.json"}  # written by ddbench beside the set; not needed to train on it


def set_bytes(folder: str | Path) -> int | None:
    """Bytes of the set's files in `folder` (recursively), bookkeeping excluded; None when there is no folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.name not in BOOKKEEPING)


def network_size(net: nn.Module) -> dict:
    """{"params": trainable + frozen parameter count, "bytes": bytes of the state dict's tensors}."""
    return {"params": sum(p.numel() for p in net.parameters()),
            "bytes": sum(t.numel() * t.element_size() for t in net.state_dict().values())}


def record_budget(dset, protocol, spec, device) -> dict:
    """The `extra["budget"]` fields of every record of one evaluated set under one protocol."""
    out = {"set_bytes": set_bytes(dset.provenance["path"]) if dset.provenance.get("path") else None}
    if protocol.card.get("family") == "soft" and hasattr(protocol, "teacher"):
        teacher = protocol.teacher(spec, device)[0]  # (net, identity, info, cache): loaded from the cache just filled
        size = network_size(teacher)
        out.update(teacher_params=size["params"], teacher_bytes=size["bytes"])
    return out
