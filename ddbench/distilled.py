"""DistilledSet: the images a method produces, with their labels and provenance.

On disk a distilled set is an ImageFolder of PNGs, `<class>/<k>.png` (the format every diffusion paper uses),
plus `manifest.json` holding the sha256 of every file, the class list, the labels and the provenance. Saving
is atomic: the folder is written under a temporary name and renamed, so a killed run never leaves a
half-written set that a later run would reuse. Foreign formats: any ImageFolder (other tools' output), the
VICO `.pt` (`{"data": [[images, labels]]}` / `(images, labels)`) and the MTT `images_best.pt` + `labels_best.pt`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import DataError
from .safeload import load_tensors

MANIFEST = "manifest.json"
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class DistilledSet:
    images: torch.Tensor  # uint8, N×C×H×W
    labels: torch.Tensor  # int64, N (hard labels: position in `classes`)
    classes: tuple[str, ...]
    provenance: dict = field(default_factory=dict)
    soft_labels: torch.Tensor | None = None  # float, N×num_classes (optional)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        self.labels = self.labels.long()
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.classes = tuple(self.classes)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ipc(self) -> int:
        """Images per class (the smallest class count, so an uneven set is not over-credited)."""
        counts = torch.bincount(self.labels, minlength=self.num_classes)
        return int(counts.min())

    # ------------------------------------------------------------------ hashing
    def png_bytes(self) -> list[bytes]:
        return [_png(img) for img in self.images]

    def sha256(self) -> str:
        """Hash of the set's content: class list, labels and pixels (independent of PNG encoder settings)."""
        h = hashlib.sha256()
        h.update(json.dumps(list(self.classes)).encode())
        h.update(self.labels.numpy().astype(np.int64).tobytes())
        h.update(str(tuple(self.images.shape)).encode())
        h.update(self.images.contiguous().numpy().tobytes())
        if self.soft_labels is not None:
            h.update(self.soft_labels.float().contiguous().numpy().tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ writing
    def save(self, path: str | os.PathLike) -> str:
        """Write `<path>/<class>/<k>.png` + manifest.json atomically; return the set's sha256."""
        path = Path(path)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
        except OSError as e:
            raise DataError(f"cannot write the distilled set to {path.parent}: {e.strerror}. Choose a writable --out.") from None
        try:
            digest = self._write(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a killed save leaves nothing half-written behind
            raise
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return digest

    def _write(self, tmp: Path) -> str:
        files, counters = [], {}
        for img, label in zip(self.images, self.labels.tolist()):
            cls = _safe(self.classes[label])
            k = counters.get(cls, 0)
            counters[cls] = k + 1
            rel = f"{cls}/{k}.png"
            (tmp / cls).mkdir(exist_ok=True)
            data = _png(img)
            (tmp / rel).write_bytes(data)
            files.append({"file": rel, "label": label, "sha256": hashlib.sha256(data).hexdigest()})
        if self.soft_labels is not None:
            torch.save(self.soft_labels.cpu(), tmp / "soft_labels.pt")
        digest = self.sha256()
        manifest = {"format": "ddbench-distilled/1", "sha256": digest, "classes": list(self.classes),
                    "shape": list(self.images.shape[1:]), "files": files,
                    "soft_labels": self.soft_labels is not None, "provenance": self.provenance}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        return digest

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: str | os.PathLike, classes: tuple[str, ...] | None = None,
             size: int | None = None, channels: int | None = None) -> "DistilledSet":
        """Read a ddbench set (verifying every file's sha256) or any ImageFolder of images.

        For a foreign ImageFolder, `classes` gives the label order (e.g. a dataset's wnid list); without it the
        sub-folders are sorted. `size` resizes (shorter side + centre crop) images of differing sizes.
        """
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"distilled set {path} does not exist or is not a folder")
        if (path / MANIFEST).exists():
            return _load_manifest(path)
        return _load_imagefolder(path, classes, size, channels)

    @classmethod
    def from_tensors(cls, path: str | os.PathLike, classes: tuple[str, ...]) -> "DistilledSet":
        """Import the VICO `.pt` or MTT `images_best.pt`/`labels_best.pt` formats (float images, any range)."""
        path = Path(path)
        if path.is_dir() and (path / "images_best.pt").exists():
            images = load_tensors(path / "images_best.pt", "MTT images")
            labels = load_tensors(path / "labels_best.pt", "MTT labels")
        elif path.is_file():
            obj = load_tensors(path, "VICO distilled set")
            try:
                if isinstance(obj, dict) and "data" in obj:
                    obj = obj["data"][0]
                images, labels = obj[0], obj[1]
            except (KeyError, IndexError, TypeError):
                raise DataError(f"{path}: expected a VICO set ((images, labels), or {{'data': [(images, labels)]}})") \
                    from None
        else:
            raise DataError(f"{path}: expected a VICO .pt file or an MTT folder with images_best.pt and labels_best.pt")
        if not (isinstance(images, torch.Tensor) and images.dim() == 4 and isinstance(labels, torch.Tensor)
                and labels.dim() in (1, 2) and len(labels) == len(images)):
            raise DataError(f"{path}: expected N×C×H×W images and N labels (or N×K soft labels) as tensors")
        if labels.dim() == 2:  # soft / one-hot labels
            labels = labels.argmax(1)
        images = images.float()
        lo, hi = images.amin(dim=(1, 2, 3), keepdim=True), images.amax(dim=(1, 2, 3), keepdim=True)
        # Tensor formats store normalised images; min-max per image maps them to the displayable range.
        images = ((images - lo) / (hi - lo).clamp_min(1e-8) * 255).round().to(torch.uint8)
        return cls(images, labels.long(), classes, {"imported_from": str(path)})


# ---------------------------------------------------------------------- helpers
def _safe(name: str) -> str:
    return name.replace("/", "_").replace(os.sep, "_")


def _png(img: torch.Tensor) -> bytes:
    arr = img.permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=1)  # speed over size: sets are small and rewritten rarely
    return buf.getvalue()


def _read_image(file: Path, channels: int | None, size: int | None) -> torch.Tensor:
    """uint8 C×H×W; `size` resizes (shorter side) and centre-crops like the dataset decoder."""
    if size is not None:
        from .data.images import decode_file

        return decode_file(file, size, channels or 3)
    try:
        with Image.open(file) as im:
            arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"cannot read image {file}: {e}. Remove or replace the file.") from None
    t = torch.from_numpy(arr.copy())
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1)


def _load_manifest(path: Path) -> DistilledSet:
    m = json.loads((path / MANIFEST).read_text())
    channels = m["shape"][0]
    images, labels = [], []
    for entry in m["files"]:
        file = path / entry["file"]
        if not file.exists():
            raise DataError(f"distilled set {path} is missing {entry['file']} listed in its manifest")
        if hashlib.sha256(file.read_bytes()).hexdigest() != entry["sha256"]:
            raise DataError(f"{file} does not match the sha256 in {path / MANIFEST}: the set was modified; "
                            "re-run the method or delete the folder")
        images.append(_read_image(file, channels, None))
        labels.append(entry["label"])
    soft = load_tensors(path / "soft_labels.pt", "soft labels") if m.get("soft_labels") else None
    return DistilledSet(torch.stack(images), torch.tensor(labels), tuple(m["classes"]), m.get("provenance", {}), soft)


def _load_imagefolder(path: Path, classes, size, channels) -> DistilledSet:
    folders = sorted(p.name for p in path.iterdir() if p.is_dir())
    if classes is None:
        classes = tuple(folders)
    unknown = [f for f in folders if f not in {_safe(c) for c in classes}]
    if unknown:
        raise DataError(f"{path} has class folders not in the dataset's class list: {unknown[:5]} "
                        f"({len(unknown)} in all). Expected folder names like {list(classes[:3])}.")
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = path / _safe(name)
        files = sorted(f for f in folder.glob("*") if f.suffix.lower() in IMAGE_EXTS) if folder.is_dir() else []
        for f in files:
            images.append(_read_image(f, channels, size))
            labels.append(label)
    if not images:
        raise DataError(f"{path} holds no images in class folders {list(classes[:3])}…")
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise DataError(f"{path} has images of different sizes {sorted(shapes)[:3]}; pass a size to resize them")
    return DistilledSet(torch.stack(images), torch.tensor(labels), tuple(classes), {"imported_from": str(path)})
