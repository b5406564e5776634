"""Federated training with Flower (``pip install flwr``): our engine trains inside Flower's
``NumPyClient``, so any Flower server and strategy (FedAvg, FedProx, SecAgg+, ...) federates it.

    client = FlowerClient(model, train_data=batches, eval_data=ids, local_steps=5)
    flwr.client.start_client(server_address="127.0.0.1:8080", client=client.to_client())

Parameters travel as the model's float weights in the order of ``model.weights()``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import numpy as np

try:
    from flwr.client import NumPyClient
except ImportError as error:  # pragma: no cover - exercised only without flwr
    raise ImportError("optimization_core.federated needs Flower: pip install flwr") from error

from ._model import TruthGPTModel


class FlowerClient(NumPyClient):
    """One participant: ``fit`` loads the global weights, trains ``local_steps`` steps on this
    client's batches and returns its weights; ``evaluate`` reports the loss on ``eval_data``.

    ``train_data``: a callable returning a fresh iterable of token batches (what ``model.train``
    accepts), called once per round; ``eval_data``: what ``model.eval`` accepts."""

    def __init__(self, model: TruthGPTModel, train_data: Callable[[], Any], eval_data: Any,
                 local_steps: int = 1) -> None:
        self.model = model
        self.train_data = train_data
        self.eval_data = eval_data
        self.local_steps = local_steps
        self.names = list(model.weights())

    def get_parameters(self, config: Dict[str, Any]) -> List[np.ndarray]:
        weights = self.model.weights()
        return [np.array(weights[name]) for name in self.names]

    def set_parameters(self, parameters: List[np.ndarray]) -> None:
        if len(parameters) != len(self.names):
            raise ValueError(f"expected {len(self.names)} arrays, got {len(parameters)}")
        self.model.set_weights(dict(zip(self.names, parameters)))

    def fit(self, parameters: List[np.ndarray], config: Dict[str, Any]) -> Tuple[List[np.ndarray], int, Dict]:
        self.set_parameters(parameters)
        summary = self.model.train(self.train_data(), steps=self.local_steps, progress=False)
        batch = self.model.config.train["batch_size"]
        return self.get_parameters(config), self.local_steps * batch, {"loss": float(summary["loss"])}

    def evaluate(self, parameters: List[np.ndarray], config: Dict[str, Any]) -> Tuple[float, int, Dict]:
        self.set_parameters(parameters)
        result = self.model.eval(self.eval_data)
        return float(result["loss"]), int(result["tokens"]), {"perplexity": float(result["perplexity"])}
