"""Test configuration: gpu/slow markers are skipped unless asked for; caches go to a per-session tmp dir."""
import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--run-gpu", action="store_true", help="run tests marked gpu (needs CUDA)")
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    for marker, flag in (("gpu", "--run-gpu"), ("slow", "--run-slow")):
        if config.getoption(flag):
            continue
        skip = pytest.mark.skip(reason=f"needs {flag}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep test artefacts (decoded data, teachers, generators) out of the user's cache."""
    if "DDBENCH_CACHE" not in os.environ or os.environ.get("DDBENCH_TEST_OWN_CACHE"):
        os.environ["DDBENCH_CACHE"] = str(tmp_path_factory.mktemp("ddbench-cache"))
    os.environ.setdefault("DDBENCH_NO_PROGRESS", "1")
    # Set metrics in pixel space: no feature network to train in every runner test (tests/test_metrics.py
    # covers the network spaces and the default).
    os.environ.setdefault("DDBENCH_SET_METRICS", "pixels")
    # The nonstandard-subset gate stays as a user meets it: a test that reads a generated ImageNet tree (a few
    # images per class, not ILSVRC-2012's 1300 / 50) asks for `allow_nonstandard_subset` itself.
    os.environ.pop("DDBENCH_ALLOW_NONSTANDARD_SUBSET", None)
    yield


@pytest.fixture
def allow_nonstandard_subset(monkeypatch):
    """As `--allow-nonstandard-subset`: the generated ImageNet trees are accepted, and every record says so."""
    monkeypatch.setenv("DDBENCH_ALLOW_NONSTANDARD_SUBSET", "1")
