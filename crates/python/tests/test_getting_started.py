"""The seed's Getting Started code, run as written against tests/config.yaml.

The seed's README text is not in this repository; the three snippets are reconstructed from
issue 23 ("Basic Usage": create, train, deploy; "Advanced Configuration": ConfigManager's YAML
and a custom TransformerConfig). `data_loader` is the one name the seed leaves to the reader:
here a PyTorch DataLoader over token windows when PyTorch is installed, else the same batches
as a list of NumPy arrays.
"""

import shutil
import textwrap
import urllib.request

import numpy as np
import pytest

from conftest import CONFIG

BASIC_USAGE = '''
from optimization_core import create_truthgpt_model

# Create model with optimizations
model = create_truthgpt_model(
    config_path="config.yaml",
    enable_gpu=True,
    enable_optimizations=True
)

# Train model
model.train(data_loader)

# Deploy model
model.deploy(endpoint="https://api.truthgpt.com")
'''

LOAD_YAML = '''
from optimization_core.config import TransformerConfig, ConfigManager

# Load configuration
config_manager = ConfigManager()
config = config_manager.load_from_yaml("config.yaml")
'''

CUSTOM_CONFIG = '''
from optimization_core.config import TransformerConfig

# Create custom configuration
custom_config = TransformerConfig(
    d_model=512,
    n_heads=8,
    n_layers=6
)
'''


def data_loader_for(vocab, batch, seq):
    windows = np.random.default_rng(0).integers(0, vocab, size=(4 * batch, seq + 1), dtype=np.int64)
    try:
        import torch
        from torch.utils.data import DataLoader
    except ImportError:
        return [windows[i:i + batch] for i in range(0, len(windows), batch)]
    return DataLoader(torch.from_numpy(windows), batch_size=batch)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, trained_dir):
    # The seed's model trains on token ids and then serves text, so its config names a
    # tokenizer: the one fitted on Macbeth by the `trained_dir` fixture.
    shutil.copy(trained_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "config.yaml").write_text(CONFIG.read_text() + "data:\n  tokenizer: tokenizer.json\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_basic_usage_runs_as_written(in_tmp, monkeypatch):
    # No GPU path yet: the documented fallback turns enable_gpu=True into a warning.
    monkeypatch.setenv("TRUTHGPT_GPU_FALLBACK", "cpu")
    scope = {"data_loader": data_loader_for(384, 4, 32)}
    with pytest.warns(RuntimeWarning, match="enable_gpu=True"):
        exec(textwrap.dedent(BASIC_USAGE), scope)
    model = scope["model"]
    assert model.step == 4
    deployment = model.deployment
    try:
        assert deployment.url == "https://api.truthgpt.com"
        with urllib.request.urlopen(deployment.local_url + "/health", timeout=10) as response:
            assert response.status == 200
    finally:
        deployment.stop()
    assert not deployment.running


def test_advanced_configuration_yaml_runs_as_written(in_tmp):
    scope = {}
    exec(textwrap.dedent(LOAD_YAML), scope)
    config = scope["config"]
    assert (config.vocab_size, config.d_model, config.n_layers) == (384, 64, 2)
    assert config.train["steps"] == 6


def test_advanced_configuration_custom_runs_as_written():
    scope = {}
    exec(textwrap.dedent(CUSTOM_CONFIG), scope)
    config = scope["custom_config"]
    assert (config.d_model, config.n_heads, config.n_layers) == (512, 8, 6)
