"""Configuration: the seed's ``TransformerConfig``, ``ConfigManager`` and ``ValidationRules``.

All three speak the engine's one schema (sections ``model``, ``train`` and ``data``; see
``truthgpt config show``) and its validation: every check is the Rust one, and a bad value raises
``ValueError`` with the engine's message, which names the field (``model.n_heads = 5: a divisor
of d_model = 64``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from . import _native

__all__ = ["TransformerConfig", "ConfigManager", "ValidationRules"]

PathLike = Union[str, "os.PathLike[str]"]


class TransformerConfig:
    """A validated model configuration, with the training and data settings that go with it.

    Keyword arguments are fields of the ``model`` section (``d_model=512, n_heads=8, ...``);
    ``train`` and ``data`` take dicts of those sections. Missing fields take the engine's defaults
    (the ``tiny`` model). Fields read as attributes: ``config.d_model``, ``config.train["steps"]``.
    """

    def __init__(self, *, train: Optional[Mapping[str, Any]] = None,
                 data: Optional[Mapping[str, Any]] = None, **model: Any) -> None:
        sections = {"model": dict(model), "train": dict(train or {}), "data": dict(data or {})}
        self._native = _native.Config.from_json(json.dumps(sections))

    @classmethod
    def _wrap(cls, native: "_native.Config") -> "TransformerConfig":
        config = cls.__new__(cls)
        config._native = native
        return config

    @classmethod
    def from_dict(cls, sections: Mapping[str, Any]) -> "TransformerConfig":
        """A config from a dict of sections (``{"model": {...}, "train": {...}}``)."""
        return cls._wrap(_native.Config.from_json(json.dumps(dict(sections))))

    @classmethod
    def preset(cls, name: str) -> "TransformerConfig":
        """One of the engine's presets (``optimization_core.PRESETS``)."""
        return cls._wrap(_native.Config.load(preset=name, env=False))

    def to_dict(self) -> Dict[str, Any]:
        """Every field of every section, as the engine resolved them."""
        return json.loads(self._native.to_json())

    def replace(self, **model: Any) -> "TransformerConfig":
        """A copy with some ``model`` fields changed (validated again)."""
        sections = self.to_dict()
        sections["model"].update(model)
        return TransformerConfig.from_dict(sections)

    @property
    def train(self) -> Dict[str, Any]:
        return self.to_dict()["train"]

    @property
    def data(self) -> Dict[str, Any]:
        return self.to_dict()["data"]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        model = self.to_dict()["model"]
        if name in model:
            return model[name]
        raise AttributeError(f"TransformerConfig has no field {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TransformerConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return repr(self._native).replace("Config(", "TransformerConfig(", 1)


class ConfigManager:
    """Loads configs as ``truthgpt`` does: defaults, then an optional preset, then the file, then
    ``TRUTHGPT_<SECTION>__<KEY>`` environment variables (e.g. ``TRUTHGPT_MODEL__N_LAYERS=4``),
    then ``overrides`` (``"section.key=value"`` strings). Unknown keys are errors."""

    def __init__(self, env: bool = True) -> None:
        self.env = env

    def load_from_yaml(self, path: PathLike, overrides: Iterable[str] = (),
                       preset: Optional[str] = None) -> TransformerConfig:
        """Loads a ``.yaml``/``.yml`` file."""
        return self._load(path, (".yaml", ".yml"), overrides, preset)

    def load_from_json(self, path: PathLike, overrides: Iterable[str] = (),
                       preset: Optional[str] = None) -> TransformerConfig:
        """Loads a ``.json`` file."""
        return self._load(path, (".json",), overrides, preset)

    def load(self, path: Optional[PathLike] = None, overrides: Iterable[str] = (),
             preset: Optional[str] = None) -> TransformerConfig:
        """Loads a YAML, JSON or TOML file (by extension), a preset, or both."""
        native = _native.Config.load(preset=preset, path=None if path is None else os.fspath(path),
                                     overrides=list(overrides), env=self.env)
        return TransformerConfig._wrap(native)

    def _load(self, path: PathLike, suffixes: tuple, overrides: Iterable[str],
              preset: Optional[str]) -> TransformerConfig:
        if not os.fspath(path).lower().endswith(suffixes):
            raise ValueError(f"{os.fspath(path)}: expected a file ending in {' or '.join(suffixes)}")
        return self.load(path, overrides, preset)


class ValidationRules:
    """The engine's validation rules (``Config::validate`` in crates/config), usable on a dict of
    sections before building anything."""

    @staticmethod
    def check(sections: Mapping[str, Any]) -> None:
        """Raises ``ValueError`` listing every violated rule, each naming its field."""
        _native.Config.from_json(json.dumps(dict(sections)))

    @staticmethod
    def errors(sections: Mapping[str, Any]) -> List[str]:
        """The violated rules as ``field = value: what is allowed`` lines; empty if valid."""
        try:
            ValidationRules.check(sections)
        except ValueError as error:
            lines = [line.strip() for line in str(error).splitlines()]
            return [line for line in lines if line and line != "invalid config:"]
        return []
