"""A Flower federation of 4 clients for 3 rounds on loopback (runs where `flwr` is installed)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")


def test_flower_federates_four_clients_for_three_rounds():
    path = Path(__file__).resolve().parents[1] / "examples" / "flower_simulation.py"
    spec = importlib.util.spec_from_file_location("flower_simulation", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    losses = example.run(clients=4, rounds=3)
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert losses[-1] < losses[0], losses
