"""Errors cross the boundary as Python exceptions with the engine's message; never an abort."""

import os

import numpy as np
import pytest

import optimization_core as oc
from optimization_core import _native

from conftest import CONFIG


def test_a_rust_panic_is_an_exception():
    with pytest.raises(BaseException) as raised:
        _native._panic_for_test("boom from Rust")
    assert type(raised.value).__name__ == "PanicException"
    assert "boom from Rust" in str(raised.value)


def test_out_of_vocabulary_ids_raise_the_engine_message():
    model = oc.create_truthgpt_model(config_path=CONFIG)
    with pytest.raises(oc.TruthGPTError, match="384"):
        model.logits([1, 2, 999])
    with pytest.raises(ValueError, match="must be in"):
        model.logits([-1, 2])
    with pytest.raises(ValueError, match="integers"):
        model.logits([0.5, 1.0])
    with pytest.raises(ValueError, match="non-empty"):
        model.logits(np.zeros((0,), dtype=np.uint32))
    with pytest.raises(oc.TruthGPTError):
        model.logits(np.zeros(65, dtype=np.uint32))  # past max_seq_len


def test_missing_and_bad_paths(tmp_path):
    with pytest.raises(oc.TruthGPTError, match="no such file"):
        oc.load_model(tmp_path / "missing")
    with pytest.raises(oc.TruthGPTError, match="no model in"):
        oc.load_model(tmp_path)
    model = oc.create_truthgpt_model(config_path=CONFIG)
    with pytest.raises(oc.TruthGPTError, match="no tokenizer"):
        model.generate("hello")
    model.save(tmp_path / "m")
    with pytest.raises(oc.TruthGPTError, match="exists"):
        model.save(tmp_path / "m")


def test_bad_training_batches():
    model = oc.create_truthgpt_model(config_path=CONFIG)
    with pytest.raises(ValueError, match="empty"):
        model.train([])
    with pytest.raises(ValueError, match="T >= 1"):
        model.train([np.zeros((2, 1), dtype=np.uint32)])
    with pytest.raises(ValueError, match="same shape"):
        model.train([(np.zeros((2, 4), dtype=np.uint32), np.zeros((2, 5), dtype=np.uint32))])
    assert model.step == 0


def test_enable_gpu_without_gpu_path(monkeypatch):
    monkeypatch.delenv("TRUTHGPT_GPU_FALLBACK", raising=False)
    with pytest.raises(oc.TruthGPTError, match="gpu_fallback='cpu'"):
        oc.create_truthgpt_model(config_path=CONFIG, enable_gpu=True)
    with pytest.warns(RuntimeWarning, match="running on the CPU"):
        oc.create_truthgpt_model(config_path=CONFIG, enable_gpu=True, gpu_fallback="cpu")
    with pytest.raises(ValueError, match="only fallback"):
        oc.create_truthgpt_model(config_path=CONFIG, enable_gpu=True, gpu_fallback="tpu")
    with pytest.warns(RuntimeWarning, match="no unoptimised path"):
        oc.create_truthgpt_model(config_path=CONFIG, enable_optimizations=False)
    with pytest.raises(ValueError, match="not both"):
        oc.create_truthgpt_model(config_path=CONFIG, config={})
    with pytest.raises(TypeError):
        oc.create_truthgpt_model(config=3)


def test_threads_are_set_once():
    assert oc.threads() == int(os.environ.get("TRUTHGPT_TEST_THREADS", "2"))
    with pytest.raises(oc.TruthGPTError, match="already exists"):
        oc.set_threads(2)
    with pytest.raises(ValueError):
        oc.set_threads(0)
