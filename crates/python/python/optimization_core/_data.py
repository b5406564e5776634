"""Turning what ``model.train`` accepts into the engine's inputs: text, or token batches."""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, List, Tuple, Union

import numpy as np


def as_ids(ids: Any) -> np.ndarray:
    """A C-contiguous uint32 array of token ids from a list, NumPy array or PyTorch tensor.
    Negative or fractional ids are a ``ValueError``, not a silent wrap-around."""
    if hasattr(ids, "detach") and hasattr(ids, "cpu"):  # a torch tensor: no copy on the CPU
        ids = np.from_dlpack(ids.detach().cpu())
    array = np.asarray(ids)
    if array.dtype == np.uint32:
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > np.iinfo(np.uint32).max):
        raise ValueError(f"token ids must be in [0, 2**32), got {array.min()}..{array.max()}")
    return np.ascontiguousarray(array, dtype=np.uint32)


def token_batch(item: Any) -> Tuple[np.ndarray, np.ndarray]:
    """(tokens, targets) of one batch: an ``(inputs, targets)`` pair, or one array of windows of
    ``T + 1`` ids, (B, T + 1) or (T + 1), whose targets are the inputs shifted by one."""
    if isinstance(item, (tuple, list)) and len(item) == 2 and not np.isscalar(item[0]):
        tokens, targets = as_ids(item[0]), as_ids(item[1])
    else:
        windows = as_ids(item)
        if windows.ndim == 1:
            windows = windows[None, :]
        if windows.ndim != 2 or windows.shape[1] < 2:
            raise ValueError(f"a batch of windows must be (B, T + 1) with T >= 1, got {windows.shape}")
        tokens, targets = windows[:, :-1], windows[:, 1:]
    if tokens.ndim == 1:
        tokens, targets = tokens[None, :], targets[None, :]
    return np.ascontiguousarray(tokens), np.ascontiguousarray(targets)


Kind = Union[Tuple[str, Union[str, List[str]]], Tuple[str, Iterator[Any]]]


def classify(data: Any, batch_size: int) -> Kind:
    """("text", path or texts) or ("batches", iterator of batches)."""
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if path.endswith(".npy"):
            windows = np.load(path)
            return "batches", (windows[i:i + batch_size] for i in range(0, len(windows), batch_size))
        return "text", path
    if isinstance(data, np.ndarray) or hasattr(data, "data_ptr"):
        data = [data]
    iterator = iter(data)
    try:
        first = next(iterator)
    except StopIteration:
        raise ValueError("no training data: the iterable is empty") from None
    if isinstance(first, str):
        texts = [first] + list(iterator)
        if not all(isinstance(text, str) for text in texts):
            raise ValueError("an iterable of texts must hold only strings")
        return "text", texts
    return "batches", _chain(first, iterator)


def _chain(first: Any, rest: Iterable[Any]) -> Iterator[Any]:
    yield first
    yield from rest
