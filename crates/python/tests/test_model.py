"""TruthGPTModel: training on every kind of data, eval, generation, logits, save and load."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import optimization_core as oc

from conftest import CONFIG, MACBETH


def windows(n, seq=32, vocab=384, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(n, seq + 1), dtype=np.int64)


def test_create_from_config_dict_and_preset():
    model = oc.create_truthgpt_model(config=oc.TransformerConfig(d_model=32, n_heads=2, n_kv_heads=2))
    assert model.config.d_model == 32 and model.num_params > 0 and model.step == 0
    assert oc.create_truthgpt_model(config={"model": {"n_layers": 1}}).config.n_layers == 1
    assert oc.create_truthgpt_model(preset="tiny").config.d_model == 64
    assert "TruthGPTModel(" in repr(model)


def test_train_on_a_text_path_then_eval_and_generate(tmp_path):
    model = oc.create_truthgpt_model(config_path=CONFIG)
    summary = model.train(MACBETH, steps=3, out=tmp_path / "run")
    assert summary["step"] == 3 and not summary["interrupted"]
    assert np.isfinite(summary["val_loss"]) and os.path.isdir(summary["checkpoint"])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["kind"] == "train"] == [1, 2, 3]
    # A second call continues: the steps add up and the tokenizer stays.
    assert model.train(MACBETH, steps=2, out=tmp_path / "run", progress=False)["step"] == 5
    result = model.eval(MACBETH, max_windows=4)
    assert result["tokens"] > 0 and abs(np.exp(result["loss"]) - result["perplexity"]) <= 1e-6 * result["perplexity"]
    text = model.generate("MACBETH.\n", max_tokens=12, temperature=0)
    assert isinstance(text, str) and text
    pieces = list(model.generate("MACBETH.\n", max_tokens=12, temperature=0, stream=True))
    assert "".join(pieces) == text and len(pieces) > 1
    ids = model.encode("Fair is foul")
    assert ids.dtype == np.uint32 and model.decode(ids) == "Fair is foul"
    assert model.eval(ids.tolist() * 40)["tokens"] > 0


def test_the_config_tokenizer_is_loaded(trained_dir, tmp_path):
    config = oc.ConfigManager().load_from_yaml(CONFIG, overrides=[f"data.tokenizer={trained_dir / 'tokenizer.json'}"])
    model = oc.create_truthgpt_model(config=config)
    assert model.decode(model.encode("Fair is foul")) == "Fair is foul"
    too_small = config.replace(vocab_size=100)
    with pytest.raises(oc.TruthGPTError, match="100"):
        oc.create_truthgpt_model(config=too_small)


def test_train_on_texts_in_memory(tmp_path):
    model = oc.create_truthgpt_model(config_path=CONFIG)
    texts = [MACBETH.read_text()[:40_000], MACBETH.read_text()[40_000:80_000]]
    assert model.train(texts, steps=2, progress=False)["step"] == 2
    assert model.eval(texts[:1], max_windows=2)["loss"] > 0


def test_batches_from_an_iterable_equal_the_same_ids_on_disk(tmp_path):
    data = windows(12)
    np.save(tmp_path / "ids.npy", data)
    from_disk = oc.create_truthgpt_model(config_path=CONFIG)
    disk = from_disk.train(tmp_path / "ids.npy", progress=False)
    from_memory = oc.create_truthgpt_model(config_path=CONFIG)
    batches = (data[i:i + 4] for i in range(0, 12, 4))
    memory = from_memory.train(batches, progress=False)
    assert disk["step"] == memory["step"] == 3
    assert disk["loss"] == memory["loss"] and np.isfinite(disk["loss"])
    np.testing.assert_array_equal(from_disk.logits(data[0, :16]), from_memory.logits(data[0, :16]))


def test_training_from_a_torch_dataloader_equals_the_ids_on_disk(tmp_path):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    data = windows(12)
    np.save(tmp_path / "ids.npy", data)
    from_disk = oc.create_truthgpt_model(config_path=CONFIG)
    disk = from_disk.train(tmp_path / "ids.npy", progress=False)
    loader = DataLoader(TensorDataset(torch.from_numpy(data)), batch_size=4, shuffle=False)
    from_loader = oc.create_truthgpt_model(config_path=CONFIG)
    # A TensorDataset yields 1-tuples; a bare tensor dataset yields the tensors themselves.
    loaded = from_loader.train((batch for (batch,) in loader), progress=False)
    assert disk["loss"] == loaded["loss"] and np.isfinite(loaded["loss"])
    pairs = DataLoader(list(zip(torch.from_numpy(data[:, :-1]), torch.from_numpy(data[:, 1:]))), batch_size=4)
    from_pairs = oc.create_truthgpt_model(config_path=CONFIG)
    assert from_pairs.train(pairs, progress=False)["loss"] == disk["loss"]


def test_steps_limit_and_accumulated_micro_batches():
    model = oc.create_truthgpt_model(config_path=CONFIG)
    assert model.train([windows(4, seed=s) for s in range(5)], steps=2, progress=False)["step"] == 2
    micro = windows(8).reshape(2, 4, 33)
    stats = model._native.train_step(np.ascontiguousarray(micro[:, :, :-1], dtype=np.uint32),
                                     np.ascontiguousarray(micro[:, :, 1:], dtype=np.uint32))
    assert stats["step"] == 3 and np.isfinite(stats["loss"])


@pytest.fixture
def sigint_raises():
    """Python's own Ctrl-C handler, whatever this process inherited: a shell starting a job in
    the background (as a CI runner may) leaves SIGINT ignored, and the signal would be lost."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _interrupt_once_training(metrics: Path, timeout: float = 120.0):
    """SIGINT to this process once `metrics` holds a training step (after the initial
    evaluation's line), so the signal lands mid-run however slow loading is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_during_text_training_saves_and_returns(tmp_path, sigint_raises):
    model = oc.create_truthgpt_model(config_path=CONFIG)
    sender = threading.Thread(target=_interrupt_once_training, args=(tmp_path / "run" / "metrics.jsonl",))
    sender.start()
    summary = model.train(MACBETH, steps=100_000, out=tmp_path / "run", progress=False)
    sender.join()
    assert summary["interrupted"] and 0 < summary["step"] < 100_000, summary
    assert oc.load_model(summary["checkpoint"]).num_params == model.num_params


def test_ctrl_c_during_batch_training_saves_and_returns(tmp_path, sigint_raises):
    def batches():
        yield windows(4)
        yield windows(4, seed=1)
        raise KeyboardInterrupt

    model = oc.create_truthgpt_model(config_path=CONFIG)
    summary = model.train(batches(), out=tmp_path, progress=False)
    assert summary["interrupted"] and summary["step"] == 2
    saved = oc.load_model(summary["checkpoint"])
    ids = windows(1)[0, :10]
    np.testing.assert_array_equal(saved.logits(ids), model.logits(ids))


def test_logits_shapes(trained):
    one = trained.logits([1, 2, 3])
    assert one.shape == (3, 384) and one.dtype == np.float32
    batch = trained.logits(np.array([[1, 2, 3], [4, 5, 6]]))
    assert batch.shape == (2, 3, 384)
    np.testing.assert_array_equal(batch[0], one)


def test_save_and_load_round_trip(trained, tmp_path):
    trained.save(tmp_path / "copy")
    again = oc.load_model(tmp_path / "copy")
    ids = [5, 6, 7, 8]
    np.testing.assert_array_equal(again.logits(ids), trained.logits(ids))
    assert again.generate("KING.", max_tokens=5, temperature=0) == trained.generate("KING.", max_tokens=5, temperature=0)


def test_the_gil_is_released_during_long_calls():
    model = oc.create_truthgpt_model(config=oc.TransformerConfig(d_model=128, n_layers=4, max_seq_len=256))
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    ids = np.arange(256, dtype=np.uint32) % 256
    counter = threading.Thread(target=count)
    counter.start()
    started = time.perf_counter()
    for _ in range(20):
        model.logits(ids)
    ended = time.perf_counter()
    stop.set()
    counter.join()
    during = [t for t in ticks if started < t < ended]
    # A held GIL would let the counter run only between calls (about 20 ticks).
    assert len(during) >= 50, (len(during), ended - started)


def test_two_models_train_in_two_threads():
    data = windows(8)
    models = [oc.create_truthgpt_model(config_path=CONFIG) for _ in range(2)]
    results = [None, None]

    def train(i):
        results[i] = models[i].train([data[:4], data[4:]], progress=False)

    threads = [threading.Thread(target=train, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Same data, same seed: the two runs, made concurrently, agree exactly.
    assert results[0]["loss"] == results[1]["loss"] and np.isfinite(results[0]["loss"])
