"""Shared fixtures: the tests' config, a model trained on text, and the `truthgpt` binary."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import optimization_core as oc

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
CONFIG = HERE / "config.yaml"
MACBETH = REPO / "data" / "shakespeare" / "macbeth.txt"

# Two engine threads, as CI and docs/benchmarks.md measure; set once, before any model runs.
oc.set_threads(int(os.environ.get("TRUTHGPT_TEST_THREADS", "2")))


def truthgpt_binary():
    """The CLI the logits and export tests compare with: $TRUTHGPT_BIN, else the workspace's
    release build. CI sets TRUTHGPT_REQUIRE_CLI=1 so that a missing binary fails, not skips."""
    candidates = [os.environ.get("TRUTHGPT_BIN"),
                  os.path.join(os.environ.get("CARGO_TARGET_DIR", REPO / "target"), "release", "truthgpt"),
                  shutil.which("truthgpt")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            return str(candidate)
    if os.environ.get("TRUTHGPT_REQUIRE_CLI") == "1":
        pytest.fail("no truthgpt binary: build it (cargo build --release) or set TRUTHGPT_BIN")
    pytest.skip("no truthgpt binary (set TRUTHGPT_BIN)")


@pytest.fixture(scope="session")
def cli():
    binary = truthgpt_binary()
    return lambda *args: subprocess.run([binary, *map(str, args)], check=True, capture_output=True,
                                        text=True).stdout


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory):
    """A model directory: the test config trained for 4 steps on Macbeth (with its tokenizer)."""
    model = oc.create_truthgpt_model(config_path=CONFIG)
    model.train(MACBETH, steps=4, out=tmp_path_factory.mktemp("run"), progress=False)
    path = tmp_path_factory.mktemp("models") / "trained"
    model.save(path)
    return path


@pytest.fixture
def trained(trained_dir):
    return oc.load_model(trained_dir)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under TRUTHGPT_REQUIRE_ALL=1 (CI, which installs every optional dependency) a skipped
    test fails instead: a skip there means something CI should have run did not."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("TRUTHGPT_REQUIRE_ALL") == "1" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under TRUTHGPT_REQUIRE_ALL=1: {report.longrepr}"
