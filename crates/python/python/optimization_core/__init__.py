"""TruthGPT Optimization Core from Python: the seed's Getting Started API on the Rust engine.

    from optimization_core import create_truthgpt_model
    model = create_truthgpt_model(config_path="config.yaml")
    model.train("data/shakespeare", steps=100)
    print(model.generate("HAMLET.\\n", max_tokens=40))
    with model.deploy(port=8000) as server:      # the OpenAI-compatible API at server.url + "/v1"
        ...

Logits and weights are NumPy arrays without copies; ``to_torch``/``from_torch`` go through DLPack.
"""

from . import config
from ._model import TruthGPTModel, create_truthgpt_model, from_torch, load_model, to_torch
from ._native import PRESETS, TruthGPTError, cuda_device_count, set_threads, threads
from .config import ConfigManager, TransformerConfig, ValidationRules
from .deploy import Deployment

__all__ = [
    "PRESETS", "ConfigManager", "Deployment", "TransformerConfig", "TruthGPTError",
    "TruthGPTModel", "ValidationRules", "config", "create_truthgpt_model", "cuda_device_count",
    "from_torch", "load_model", "set_threads", "threads", "to_torch",
]
__version__ = "0.1.0"
