"""``TruthGPTModel``, ``create_truthgpt_model`` and ``load_model``."""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import warnings
from typing import Any, Dict, Iterator, Mapping, Optional, Union

import numpy as np

from . import _data, _native, deploy as _deploy
from .config import ConfigManager, TransformerConfig

PathLike = Union[str, "os.PathLike[str]"]

#: Set to ``cpu`` to let ``enable_gpu=True`` warn and run on the CPU instead of raising.
GPU_FALLBACK_ENV = "TRUTHGPT_GPU_FALLBACK"


class TruthGPTModel:
    """A model on the TruthGPT engine: train, evaluate, generate, take logits, save, deploy.

    Every method that computes releases the GIL, so other Python threads (a notebook's UI, a
    second model training) run meanwhile. Errors from the engine are ``TruthGPTError`` (a
    ``RuntimeError``) or, for configs, ``ValueError``, carrying the engine's message."""

    def __init__(self, native: "_native.Model") -> None:
        self._native = native
        self._run_dir: Optional[tempfile.TemporaryDirectory] = None
        #: The last server ``deploy`` started.
        self.deployment: Optional[_deploy.Deployment] = None

    # --- introspection -------------------------------------------------------------------
    @property
    def config(self) -> TransformerConfig:
        return TransformerConfig._wrap(self._native.config)

    @property
    def num_params(self) -> int:
        return self._native.num_params

    @property
    def step(self) -> int:
        """Optimiser steps taken."""
        return self._native.step

    def __repr__(self) -> str:
        return repr(self._native).replace("Model(", "TruthGPTModel(", 1)

    # --- training ------------------------------------------------------------------------
    def train(self, data: Any, steps: Optional[int] = None, out: Optional[PathLike] = None,
              progress: bool = True) -> Dict[str, Any]:
        """Trains on ``data`` and returns a summary (``step``, ``loss`` or ``val_loss``, ``interrupted``).

        ``data`` is one of:
          * a path: text (a file, a directory of ``.txt``/``.jsonl``) or a prepared dataset
            directory, trained as ``truthgpt train`` does (sampled windows, validation,
            checkpoints in ``out``); a ``.npy`` of (N, T + 1) token windows, taken in order in
            batches of ``train.batch_size``;
          * an iterable of strings (texts in memory), trained like a text path;
          * an iterable of token batches (NumPy arrays, lists, or PyTorch tensors, as a
            ``DataLoader`` yields them): each (B, T + 1) windows or an ``(inputs, targets)``
            pair of (B, T), one optimiser step per batch.

        ``steps``: steps to take (default: ``train.steps`` for text; every batch otherwise).
        ``out``: the run directory (default: a temporary one kept while the model lives).
        Progress shows through ``tqdm`` when it is installed. Ctrl-C stops after the current
        step, saves (a checkpoint in ``out``) and returns with ``interrupted=True``.
        """
        out_dir = os.fspath(out) if out is not None else self._default_run_dir()
        kind, source = _data.classify(data, self.config.train["batch_size"])
        if kind == "text":
            total = steps if steps is not None else self.config.train["steps"]
            with _Progress(progress, total) as bar:
                return self._native.train_text(source, total, out_dir, bar.update)
        return self._train_batches(source, steps, out_dir, progress)

    def _train_batches(self, batches: Iterator[Any], steps: Optional[int], out_dir: str,
                       progress: bool) -> Dict[str, Any]:
        summary: Dict[str, Any] = {"step": self.step, "loss": float("nan"), "interrupted": False}
        with _Progress(progress, steps) as bar:
            try:
                for done, batch in enumerate(batches):
                    if steps is not None and done >= steps:
                        break
                    tokens, targets = _data.token_batch(batch)
                    stats = self._native.train_step(tokens, targets)
                    summary.update(step=stats["step"], loss=stats["loss"])
                    bar.update(stats["step"], stats["loss"])
            except KeyboardInterrupt:
                summary["interrupted"] = True
                summary["checkpoint"] = os.path.join(out_dir, f"step-{self.step:08d}")
                if not os.path.exists(summary["checkpoint"]):
                    self.save(summary["checkpoint"])
        return summary

    def _default_run_dir(self) -> str:
        if self._run_dir is None:
            self._run_dir = tempfile.TemporaryDirectory(prefix="truthgpt-run-")
        return self._run_dir.name

    def eval(self, data: Any, max_windows: int = 1000) -> Dict[str, float]:
        """Loss and perplexity as ``truthgpt eval`` measures them, on a path (a prepared
        dataset's validation split, or text), texts, or a 1-D array of token ids."""
        if not isinstance(data, (str, os.PathLike)) and not (
                isinstance(data, (list, tuple)) and data and isinstance(data[0], str)):
            data = _data.as_ids(data)
        elif isinstance(data, os.PathLike):
            data = os.fspath(data)
        loss, perplexity, tokens = self._native.eval(data, max_windows)
        return {"loss": loss, "perplexity": perplexity, "tokens": tokens}

    # --- inference -----------------------------------------------------------------------
    def logits(self, ids: Any) -> np.ndarray:
        """Float32 logits of one forward pass: (T, V) for (T) ids, (B, T, V) for (B, T)."""
        return self._native.logits(_data.as_ids(ids))

    def generate(self, prompt: str, max_tokens: int = 128, temperature: float = 0.8,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 seed: int = 0, stop: Optional[list] = None,
                 stream: bool = False) -> Union[str, Iterator[str]]:
        """The text generated after ``prompt`` (without the prompt); with ``stream=True``, an
        iterator of its pieces as they are decoded. ``temperature=0`` is greedy."""
        args = (prompt, max_tokens, temperature, top_k, top_p, repetition_penalty, seed, list(stop or []))
        if not stream:
            return self._native.generate(*args)[0]
        return _stream(self._native, args)

    # --- weights and interop -------------------------------------------------------------
    def weights(self) -> Dict[str, np.ndarray]:
        """Every float parameter as a read-only NumPy view of the engine's buffer (no copy):
        training updates it in place. Change parameters with ``set_weights``."""
        return self._native.weights()

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        """Copies arrays (NumPy, or anything with ``__dlpack__``) into the named parameters."""
        for name, value in weights.items():
            array = np.from_dlpack(value) if not isinstance(value, np.ndarray) else value
            self._native.set_weight(name, np.ascontiguousarray(array, dtype=np.float32))

    def to_torch(self) -> Dict[str, Any]:
        """The parameters as PyTorch tensors sharing the engine's memory, through DLPack."""
        return {name: to_torch(array) for name, array in self.weights().items()}

    def from_torch(self, state_dict: Mapping[str, Any]) -> None:
        """Copies PyTorch tensors (CPU, float32) into the named parameters, read through DLPack."""
        self.set_weights({name: from_torch(tensor) for name, tensor in state_dict.items()})

    def encode(self, text: str) -> np.ndarray:
        return self._native.encode(text)

    def decode(self, ids: Any) -> str:
        return self._native.decode(_data.as_ids(ids).tolist())

    # --- files and serving ---------------------------------------------------------------
    def save(self, path: PathLike) -> None:
        """Writes a model directory (``load_model``, ``truthgpt generate`` and ``serve`` read it)."""
        self._native.save(os.fspath(path))

    def deploy(self, host: str = "127.0.0.1", port: int = 0, api_key: Optional[str] = None,
               endpoint: Optional[str] = None) -> _deploy.Deployment:
        """Serves the model with the OpenAI-compatible API in the background and returns the
        handle (``.url``, ``.stop()``, a context manager). ``port=0`` picks a free port.
        ``endpoint`` is the public address to advertise (``https://api.example.com``), for a
        server behind a proxy; an unparseable one is a ``ValueError``. With ``api_key``, clients
        must send it as their bearer token."""
        # Kept on the model, so that a server started and not assigned (the seed's
        # `model.deploy(endpoint=...)`) runs until `model.deployment.stop()` or exit.
        self.deployment = _deploy.start(self._native, host, port, api_key, endpoint)
        return self.deployment


class _Progress:
    """A tqdm bar when tqdm is installed and ``enabled``; otherwise nothing."""

    def __init__(self, enabled: bool, total: Optional[int]) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, unit="step")

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", step=step)

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _stream(native: "_native.Model", args: tuple) -> Iterator[str]:
    """Generation on a thread (it releases the GIL), its pieces handed over through a queue."""
    pieces: "queue.Queue" = queue.Queue()
    done = object()

    def work() -> None:
        try:
            native.generate(*args, on_piece=pieces.put)
            pieces.put(done)
        except BaseException as error:  # re-raised in the consumer
            pieces.put(error)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while True:
        piece = pieces.get()
        if piece is done:
            break
        if isinstance(piece, BaseException):
            raise piece
        yield piece
    thread.join()


def to_torch(array: np.ndarray) -> Any:
    """A PyTorch tensor sharing ``array``'s memory (DLPack; PyTorch must be installed)."""
    import torch

    return torch.from_dlpack(array)


def from_torch(tensor: Any) -> np.ndarray:
    """A NumPy array sharing a CPU tensor's memory (DLPack)."""
    return np.from_dlpack(tensor.detach())


def _gpu_check(enable_gpu: bool, gpu_fallback: Optional[str]) -> None:
    if not enable_gpu:
        return
    fallback = gpu_fallback or os.environ.get(GPU_FALLBACK_ENV)
    gpus = _native.cuda_device_count()
    why = (f"{gpus} CUDA GPU(s) found, but the engine's models train and run on the CPU only "
           "(its CUDA kernels are not yet wired into the model)") if gpus else "no CUDA GPU found"
    if fallback == "cpu":
        warnings.warn(f"enable_gpu=True: {why}; running on the CPU", RuntimeWarning, stacklevel=3)
        return
    if fallback is not None:
        raise ValueError(f"gpu_fallback={fallback!r}: the only fallback is 'cpu'")
    raise _native.TruthGPTError(
        f"enable_gpu=True: {why}. Pass gpu_fallback='cpu' (or set {GPU_FALLBACK_ENV}=cpu) to run "
        "on the CPU with a warning, or enable_gpu=False.")


def create_truthgpt_model(config_path: Optional[PathLike] = None,
                          config: Union[TransformerConfig, Mapping[str, Any], None] = None,
                          preset: Optional[str] = None, enable_gpu: bool = False,
                          enable_optimizations: bool = True,
                          gpu_fallback: Optional[str] = None) -> TruthGPTModel:
    """A fresh model from a config file (YAML/JSON/TOML, with ``TRUTHGPT_…`` environment
    overrides), a ``TransformerConfig`` or dict of sections, or a preset (on its own, or under
    the file). With none, the engine's defaults (the ``tiny`` model).

    ``enable_gpu=True``: the engine's models run on the CPU only for now, so this raises
    ``TruthGPTError`` unless ``gpu_fallback='cpu'`` (or ``TRUTHGPT_GPU_FALLBACK=cpu``) asks to warn
    and run on the CPU. ``enable_optimizations``: the engine has one, optimised, path (fused
    kernels, packed GEMMs, SIMD); ``False`` warns that it changes nothing."""
    _gpu_check(enable_gpu, gpu_fallback)
    if not enable_optimizations:
        warnings.warn("enable_optimizations=False: the engine has no unoptimised path; ignored",
                      RuntimeWarning, stacklevel=2)
    if config_path is not None and config is not None:
        raise ValueError("give config_path or config, not both")
    if config is None:
        config = ConfigManager().load(config_path, preset=preset)
    elif isinstance(config, Mapping):
        config = TransformerConfig.from_dict(config)
    elif not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig or a dict, not {type(config).__name__}")
    return TruthGPTModel(_native.Model.create(config._native))


def load_model(path: PathLike) -> TruthGPTModel:
    """Loads our model or run directory, a Hugging Face model directory, or a GGUF file."""
    return TruthGPTModel(_native.Model.load(os.fspath(path)))
