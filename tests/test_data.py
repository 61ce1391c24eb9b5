"""ddbench.data: registry, embedded arrays, ImageNet-style folders, decode rule, cache and errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fakes import make_idx_folder, make_imagenet_tree
from PIL import Image

import ddbench.data.images as images_mod
from ddbench.data import DATASETS, decode_ids, describe_dataset, get_dataset, list_files, load_split
from ddbench.data.embedded import DIGITS_MEAN, DIGITS_SIZE, DIGITS_STD, FASHION_DEFAULT_ROOT
from ddbench.data.spec import read_class_list
from ddbench.errors import ConfigError, DataError

NETTE = read_class_list("nette")
WOOF = read_class_list("woof")


@pytest.fixture(autouse=True)
def _no_env_roots(monkeypatch, tmp_path):
    for var in ("DDBENCH_IMAGENET_ROOT", "DDBENCH_FASHION_ROOT", "DDBENCH_MNIST_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    """Real nette + woof wnids, 3 train and 2 val JPEGs each (40×32, so resizing and cropping both happen)."""
    root = tmp_path_factory.mktemp("imagenet")
    return make_imagenet_tree(root, NETTE + WOOF, n_train=3, n_val=2)


# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------


def test_registry_names():
    assert set(DATASETS.names()) == {"digits", "fashion", "mnist", "woof", "nette", "idc", "imagenet100",
                                     "imagenet1k", "imagefolder"}  # fmt: skip


def test_describe_every_dataset_without_data():
    rows = {name: describe_dataset(name) for name in DATASETS}
    assert rows["imagenet100"][1:3] == ("100", "256 (test 224)") and rows["digits"][1:3] == ("10", "16")
    assert "DDBENCH_IMAGENET_ROOT" in rows["woof"][3] and "DDBENCH_MNIST_ROOT" in rows["mnist"][3]


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean woof"):
        get_dataset("wof")
    with pytest.raises(ConfigError, match="imagefolder:<path>"):
        get_dataset("imagefolder")


def test_class_lists_and_imagenet_index(allow_nonstandard_subset, imagenet_root):
    assert len(read_class_list("imagenet1k")) == 1000 and len(read_class_list("imagenet100")) == 100
    assert read_class_list("idc") == read_class_list("imagenet100")[:10]
    nette = get_dataset("nette", imagenet_root=str(imagenet_root))
    woof = get_dataset("woof", imagenet_root=str(imagenet_root))
    assert nette.imagenet_index[nette.classes.index("n01440764")] == 0  # tench
    assert woof.classes[0] == "n02096294" and woof.imagenet_index[0] == 193  # Australian terrier
    assert (woof.resolution, woof.test_resolution, woof.channels, woof.kind) == (256, 224, 3, "imagenet")


# ---------------------------------------------------------------------------------------------------------
# Embedded arrays
# ---------------------------------------------------------------------------------------------------------


def test_digits_split_and_constants(tmp_path):
    spec = get_dataset("digits")
    train = load_split(spec, "train", cache_dir=tmp_path)
    test = load_split(spec, "test", cache_dir=tmp_path)
    assert train.images.shape == (1352, 1, 16, 16) and test.images.shape == (445, 1, 16, 16)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert set(train.labels.tolist()) == set(range(10)) and set(test.labels.tolist()) == set(range(10))
    assert not set(train.ids) & set(test.ids)
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    x = train.images.float() / 255  # the documented constants are the train split's pixel statistics
    assert x.mean().item() == pytest.approx(DIGITS_MEAN[0], abs=1e-4)
    assert x.std().item() == pytest.approx(DIGITS_STD[0], abs=1e-4)


def test_idx_folder_loads(tmp_path):
    root = make_idx_folder(tmp_path / "idx", n_train=50, n_test=20)
    spec = get_dataset("fashion", data_root=str(root))
    assert spec.classes[0] == "T-shirt/top" and spec.mean == (0.2861,) and spec.root == str(root.resolve())
    train = load_split(spec, "train", cache_dir=tmp_path / "c")
    test = load_split(spec, "test", cache_dir=tmp_path / "c")
    assert train.images.shape == (50, 1, 28, 28) and test.images.shape == (20, 1, 28, 28)
    assert train.labels.min() == 0 and train.labels.max() == 9
    assert torch.equal(train.labels, torch.arange(50)[torch.argsort(torch.arange(50) % 10, stable=True)] % 10)
    assert train.ids[:3] == ["train/0", "train/10", "train/20"]  # grouped by class, index order within
    small = decode_ids(spec, "train", ["train/3", "train/7"], 14)
    assert small.shape == (2, 1, 14, 14) and small.dtype == torch.uint8


def test_mnist_needs_a_folder(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="DDBENCH_MNIST_ROOT"):
        get_dataset("mnist")
    monkeypatch.setenv("DDBENCH_MNIST_ROOT", str(make_idx_folder(tmp_path / "m", 20, 10)))
    assert get_dataset("mnist").std == (0.3081,)
    (tmp_path / "m" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        get_dataset("mnist")


def test_corrupt_idx_file_is_named(tmp_path):
    root = make_idx_folder(tmp_path / "idx", n_train=20, n_test=10)
    images = root / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:100])  # truncated gzip stream
    spec = get_dataset("fashion", data_root=str(root))
    with pytest.raises(DataError, match="cannot read IDX file .*train-images-idx3-ubyte.gz"):
        load_split(spec, "train", cache_dir=tmp_path / "c")


def test_fashion_missing_folder_names_flag_and_env(tmp_path):
    with pytest.raises(DataError, match="--data-root.*DDBENCH_FASHION_ROOT"):
        get_dataset("fashion", data_root=str(tmp_path / "nowhere"))


@pytest.mark.skipif(not Path(FASHION_DEFAULT_ROOT).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_matches_its_constants():
    spec = get_dataset("fashion")
    ids, labels = list_files(spec, "test")
    assert len(ids) == 10_000 and torch.equal(torch.bincount(labels), torch.full((10,), 1000))
    x = decode_ids(spec, "test", ids, 28).float() / 255
    assert x.mean().item() == pytest.approx(spec.mean[0], abs=2e-3)
    assert x.std().item() == pytest.approx(spec.std[0], abs=2e-3)


# ---------------------------------------------------------------------------------------------------------
# ImageNet-style folders
# ---------------------------------------------------------------------------------------------------------


def test_imagenet_labels_follow_the_class_list(allow_nonstandard_subset, imagenet_root, tmp_path):
    woof = get_dataset("woof", imagenet_root=str(imagenet_root))
    assert list(woof.classes) != sorted(woof.classes)  # the list is deliberately not sorted
    ids, labels = list_files(woof, "train")
    assert len(ids) == 30 and labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert ids[0] == "train/n02096294/n02096294_0.JPEG" and labels[0] == 0  # first line, not first sorted
    for i, label in zip(ids, labels.tolist()):
        assert i.split("/")[1] == woof.classes[label]
    test = load_split(woof, "test", cache_dir=tmp_path)
    assert test.images.shape == (20, 3, 224, 224) and test.images.dtype == torch.uint8
    assert all(i.startswith("val/") for i in test.ids)
    train = load_split(woof, "train", resolution=16, cache_dir=tmp_path)
    assert train.images.shape == (30, 3, 16, 16) and torch.equal(train.labels, labels)


def test_decode_matches_torchvision_resize_and_center_crop(tmp_path):
    from torchvision.transforms import v2

    gen = torch.Generator().manual_seed(1)
    img = Image.fromarray(torch.randint(0, 256, (37, 53, 3), generator=gen, dtype=torch.uint8).numpy())
    img.save(tmp_path / "a.png")
    ours = images_mod.decode_file(tmp_path / "a.png", 24, 3)
    ref = v2.Compose([v2.Resize(24, interpolation=v2.InterpolationMode.BICUBIC), v2.CenterCrop(24), v2.PILToTensor()])
    assert torch.equal(ours, ref(img))
    assert images_mod.decode_file(tmp_path / "a.png", 24, 1).shape == (1, 24, 24)
    arr = torch.randint(0, 256, (2, 1, 20, 30), generator=gen, dtype=torch.uint8)
    assert images_mod.resize_tensor(arr, 10).shape == (2, 1, 10, 10)


def test_list_files_is_lexicographic_and_imagefolder(tmp_path):
    for split, cls, names in [("train", "cat", ["2.png", "10.png", "1.png"]), ("train", "ant", ["b.png"]),
                              ("val", "cat", ["x.png"]), ("val", "ant", ["y.png"])]:  # fmt: skip
        (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
        for n in names:
            Image.new("RGB", (8, 12), (len(n) * 40, 0, 0)).save(tmp_path / split / cls / n)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    spec = get_dataset(f"imagefolder:{tmp_path}")
    assert spec.classes == ("ant", "cat") and spec.resolution == 64 and spec.kind == "imagefolder"
    ids, labels = list_files(spec, "train")
    assert ids == ["train/ant/b.png", "train/cat/1.png", "train/cat/10.png", "train/cat/2.png"]
    assert labels.tolist() == [0, 1, 1, 1]
    assert list_files(spec, "test")[0] == ["val/ant/y.png", "val/cat/x.png"]  # val/ stands in for test/
    plain = decode_ids(spec, "train", ids, 8)
    assert plain.shape == (4, 3, 8, 8) and plain[:, 0, 0, 0].tolist() == [200, 200, 240, 200]
    with pytest.raises(ConfigError, match="not in"):
        decode_ids(spec, "test", ids[:1], 8)


def test_chunked_decoding_with_progress_bar_keeps_order(allow_nonstandard_subset, imagenet_root, monkeypatch):
    spec = get_dataset("nette", imagenet_root=str(imagenet_root))
    ids, _ = list_files(spec, "train")
    plain = decode_ids(spec, "train", ids, 12)
    monkeypatch.setattr(images_mod, "PROGRESS_MIN_FILES", 1)
    monkeypatch.setattr(images_mod, "DECODE_CHUNK", 4)  # 30 files -> 8 chunks
    assert torch.equal(decode_ids(spec, "train", ids, 12), plain)
    assert not torch.equal(plain[0], plain[1])


# ---------------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------------


def test_cache_hit_and_invalidation(allow_nonstandard_subset, imagenet_root, tmp_path, monkeypatch):
    root = make_imagenet_tree(tmp_path / "inet", NETTE, n_train=2, n_val=1)
    spec = get_dataset("nette", imagenet_root=str(root))
    cache = tmp_path / "cache"
    first = load_split(spec, "train", resolution=20, cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 1 and not list(cache.glob("*.tmp"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(images_mod, "decode_file", no_decoding)
    second = load_split(spec, "train", resolution=20, cache_dir=cache)
    assert torch.equal(first.images, second.images) and second.ids == first.ids
    with pytest.raises(AssertionError, match="decoded although"):  # another resolution is another entry
        load_split(spec, "train", resolution=21, cache_dir=cache)
    Image.new("RGB", (30, 30)).save(root / "train" / NETTE[3] / f"{NETTE[3]}_99.JPEG")
    with pytest.raises(AssertionError, match="decoded although"):  # a changed folder is decoded again
        load_split(spec, "train", resolution=20, cache_dir=cache)
    monkeypatch.undo()
    third = load_split(spec, "train", resolution=20, cache_dir=cache)
    assert len(third) == len(first) + 1 and len(list(cache.glob("*.pt"))) == 2


def test_embedded_cache_hit_and_default_dir(tmp_path, monkeypatch):
    spec = get_dataset("digits")
    first = load_split(spec, "test")  # default cache dir: $DDBENCH_CACHE/data
    assert len(list((tmp_path / "default-cache" / "data").glob(f"digits-test-{DIGITS_SIZE}px-*.pt"))) == 1
    monkeypatch.setattr("ddbench.data.cache.decode_ids", lambda *a, **k: pytest.fail("decoded on a cache hit"))
    assert torch.equal(load_split(spec, "test").images, first.images)


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


def test_missing_imagenet_root_names_flag_and_env(tmp_path):
    with pytest.raises(DataError, match="--imagenet-root.*DDBENCH_IMAGENET_ROOT"):
        get_dataset("nette")
    with pytest.raises(DataError, match="does not exist.*DDBENCH_IMAGENET_ROOT"):
        get_dataset("nette", imagenet_root=str(tmp_path / "nowhere"))


def test_missing_wnids_are_listed(allow_nonstandard_subset, imagenet_root, monkeypatch):
    monkeypatch.setenv("DDBENCH_IMAGENET_ROOT", str(imagenet_root))
    assert get_dataset("woof").root == str(Path(imagenet_root).resolve())  # env var is used
    # ImageNet-100 shares two classes with ImageWoof (Shih-Tzu, English foxhound), so 98 are missing.
    with pytest.raises(DataError, match=r"98 of 100 class folders are missing .*/train: n02869837, .*\(98 in all\)"):
        get_dataset("imagenet100")


def test_missing_val_folder_is_named(tmp_path):
    root = make_imagenet_tree(tmp_path, NETTE, n_train=1, n_val=1)
    (root / "val" / NETTE[4] / "ILSVRC2012_val_00000005.JPEG").unlink()
    (root / "val" / NETTE[4]).rmdir()
    with pytest.raises(DataError, match=rf"1 of 10 class folders are missing under .*val: {NETTE[4]};"):
        get_dataset("nette", imagenet_root=str(root))


def test_corrupt_jpeg_names_the_file(allow_nonstandard_subset, tmp_path):
    root = make_imagenet_tree(tmp_path / "inet", NETTE, n_train=1, n_val=1)
    bad = root / "train" / NETTE[2] / f"{NETTE[2]}_0.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    spec = get_dataset("nette", imagenet_root=str(root))
    with pytest.raises(DataError, match=f"cannot decode image .*{bad.name}"):
        load_split(spec, "train", resolution=16, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.pt"))  # nothing half-made is cached
