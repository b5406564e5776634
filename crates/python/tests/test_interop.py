"""NumPy and DLPack without copies; the CLI's logits; Hugging Face and GGUF files."""

import json

import numpy as np
import pytest

import optimization_core as oc

from conftest import CONFIG


def test_weights_are_views_of_the_engine_buffer():
    model = oc.create_truthgpt_model(config_path=CONFIG)
    first, again = model.weights(), model.weights()
    assert set(first) == set(again) and len(first) > 4
    for name, array in first.items():
        assert array.dtype == np.float32
        assert array.ctypes.data == again[name].ctypes.data, name  # the same memory, not a copy
    assert sum(a.size for a in first.values()) == model.num_params
    before = {name: array.copy() for name, array in first.items()}
    model.train([np.arange(33 * 4).reshape(4, 33) % 384], progress=False)
    changed = [name for name in first if not np.array_equal(first[name], before[name])]
    assert changed, "training updates the parameters in place, so the views see it"
    del model  # the views keep the model's buffer alive
    assert all(np.isfinite(array).all() for array in first.values())


def test_set_weights_copies_into_the_model():
    model = oc.create_truthgpt_model(config_path=CONFIG)
    name, array = next(iter(model.weights().items()))
    model.set_weights({name: np.full(array.shape, 0.25, dtype=np.float32)})
    np.testing.assert_array_equal(model.weights()[name], 0.25)
    with pytest.raises(KeyError, match="no float parameter"):
        model.set_weights({"nope": array})
    with pytest.raises(ValueError, match="does not match"):
        model.set_weights({name: np.zeros(3, dtype=np.float32)})


def test_dlpack_round_trip_through_numpy_keeps_the_pointer(trained):
    logits = trained.logits([1, 2, 3])
    back = np.from_dlpack(logits)
    assert back.ctypes.data == logits.ctypes.data
    np.testing.assert_array_equal(back, logits)


def test_dlpack_round_trip_through_torch_keeps_the_pointer(trained):
    torch = pytest.importorskip("torch")
    logits = trained.logits([1, 2, 3])
    tensor = oc.to_torch(logits)
    assert isinstance(tensor, torch.Tensor) and tensor.data_ptr() == logits.ctypes.data
    back = oc.from_torch(tensor)
    assert back.ctypes.data == logits.ctypes.data
    weights = trained.to_torch()
    views = trained.weights()
    for name, tensor in weights.items():
        assert tensor.data_ptr() == views[name].ctypes.data, name
    doubled = {name: tensor * 2 for name, tensor in weights.items()}
    trained.from_torch(doubled)
    for name, tensor in doubled.items():
        np.testing.assert_array_equal(trained.weights()[name], tensor.numpy())


def test_logits_equal_the_cli(trained_dir, cli):
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    printed = json.loads(cli("logits", "--model", trained_dir, "--ids", ",".join(map(str, ids))))
    expected = np.array(printed["logits"], dtype=np.float32)
    got = oc.load_model(trained_dir).logits(ids)
    # The CLI prints each f32 in its shortest exact form, so the two are equal bit for bit.
    np.testing.assert_array_equal(got, expected)


def test_load_a_hugging_face_export(trained_dir, tmp_path, cli):
    ids = [7, 8, 9, 10]
    ours = oc.load_model(trained_dir).logits(ids)
    cli("export", "hf", "--out", tmp_path / "hf", trained_dir)
    hf = oc.load_model(tmp_path / "hf")
    np.testing.assert_allclose(hf.logits(ids), ours, rtol=0, atol=1e-5)
    assert hf.decode(hf.encode("Fair is foul")) == "Fair is foul"


def test_load_a_gguf_export(trained_dir, tmp_path, cli):
    # GGUF export is for the Llama family: RMSNorm, RoPE, SwiGLU, no biases.
    llama = oc.ConfigManager().load_from_yaml(CONFIG, overrides=[
        "model.norm=rmsnorm", "model.positional=rope", "model.ffn=swiglu", "model.bias=false",
        "model.n_kv_heads=2", f"data.tokenizer={trained_dir / 'tokenizer.json'}"])
    oc.create_truthgpt_model(config=llama).save(tmp_path / "llama")
    ids = [7, 8, 9, 10]
    ours = oc.load_model(tmp_path / "llama").logits(ids)
    cli("export", "gguf", "--out", tmp_path / "m.gguf", "--dtype", "f32", tmp_path / "llama")
    np.testing.assert_allclose(oc.load_model(tmp_path / "m.gguf").logits(ids), ours, rtol=0, atol=1e-4)
