"""Test configuration: gpu/slow markers are skipped unless asked for; caches go to a per-session tmp dir
(or to the shared test cache named by DDBENCH_TEST_CACHE), never to the user's DDBENCH_CACHE."""
import os
from pathlib import Path

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


TEST_CACHE_ENV = "DDBENCH_TEST_CACHE"  # opt-in: a cache shared by test sessions (CI keeps one between runs)


def session_cache(environ, make_tmp) -> str:
    """The cache folder of a test session: the one DDBENCH_TEST_CACHE names, else a fresh temporary folder.

    DDBENCH_CACHE itself is never used: it is the user's real cache, and tests write teachers, generators and
    decoded data there under test-sized recipes."""
    shared = environ.get(TEST_CACHE_ENV)
    return str(Path(shared).expanduser().resolve()) if shared else str(make_tmp())


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep test artefacts (decoded data, teachers, generators) out of the user's cache."""
    os.environ["DDBENCH_CACHE"] = session_cache(os.environ, lambda: tmp_path_factory.mktemp("ddbench-cache"))
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
