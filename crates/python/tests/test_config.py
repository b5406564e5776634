"""optimization_core.config: the engine's loading and validation, its messages as ValueErrors."""

import json

import pytest

import optimization_core as oc
from optimization_core.config import ConfigManager, TransformerConfig, ValidationRules

from conftest import CONFIG


def test_transformer_config_defaults_and_fields():
    config = TransformerConfig(d_model=128, n_heads=4)
    assert (config.d_model, config.n_heads, config.vocab_size) == (128, 4, 256)
    assert config.train["batch_size"] == 8
    assert config.replace(n_layers=3).n_layers == 3
    assert TransformerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(AttributeError, match="no field 'nope'"):
        config.nope


def test_invalid_value_names_the_field():
    with pytest.raises(ValueError, match=r"model\.n_heads = 5: a divisor of d_model = 64"):
        TransformerConfig(n_heads=5)
    with pytest.raises(ValueError, match="unknown field `n_head`"):
        TransformerConfig(n_head=4)
    with pytest.raises(ValueError, match="model.dropout"):
        TransformerConfig(dropout=1.5)


def test_config_manager_yaml_json_env_overrides(tmp_path, monkeypatch):
    manager = ConfigManager()
    config = manager.load_from_yaml(CONFIG)
    assert config.d_model == 64
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config.to_dict()))
    assert manager.load_from_json(path) == config
    monkeypatch.setenv("TRUTHGPT_MODEL__N_LAYERS", "3")
    assert manager.load_from_yaml(CONFIG).n_layers == 3
    assert ConfigManager(env=False).load_from_yaml(CONFIG).n_layers == 2
    assert manager.load_from_yaml(CONFIG, overrides=["train.steps=9"]).train["steps"] == 9
    assert manager.load(preset="gpt2-small").d_model == 768


def test_config_manager_errors(tmp_path, monkeypatch):
    manager = ConfigManager()
    with pytest.raises(ValueError, match="expected a file ending in .json"):
        manager.load_from_json(CONFIG)
    with pytest.raises(ValueError, match="does not exist"):
        manager.load_from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: -3\n")
    with pytest.raises(ValueError, match="model.d_model"):
        manager.load_from_yaml(bad)
    monkeypatch.setenv("TRUTHGPT_MODEL__N_HEADS", "7")
    with pytest.raises(ValueError, match="model.n_heads = 7"):
        manager.load_from_yaml(CONFIG)
    with pytest.raises(ValueError, match="unknown preset `nope`"):
        TransformerConfig.preset("nope")


def test_validation_rules_list_every_violation():
    assert ValidationRules.errors({"model": {"d_model": 64}}) == []
    errors = ValidationRules.errors({"model": {"n_heads": 5, "vocab_size": 0}})
    assert any(e.startswith("model.n_heads = 5") for e in errors), errors
    assert any(e.startswith("model.vocab_size = 0") for e in errors), errors
    with pytest.raises(ValueError):
        ValidationRules.check({"train": {"batch_size": 0}})


def test_presets_load():
    assert "tiny" in oc.PRESETS
    for name in oc.PRESETS:
        assert TransformerConfig.preset(name).d_model > 0
