"""Weights and other tensors of a run, as safetensors files next to the database (loaded without
executing code, unlike pickle)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported on first tensor use, so listing runs (a CLI) starts fast.
    import torch

from mnist_core.service.store.database import Database
from mnist_core.service.store.records import (
    RunStoreError,
    SUFFIX,
    TENSOR_NAME,
    WEIGHTS,
    check_run_id,
    check_tensor_name,
    write_atomically,
)


class Tensors(Database):
    """A run's tensor files."""

    def tensor_path(self, run_id: str, name: str) -> Path:
        """Where a run's tensor file lives (whether or not it exists); validates both parts."""
        return self.weights_dir / check_run_id(run_id) / f"{check_tensor_name(name)}{SUFFIX}"

    def save_tensors(self, run_id: str, name: str, tensors: Mapping[str, torch.Tensor]) -> Path:
        """Write tensors to root/weights/<run_id>/<name>.safetensors atomically: readers see
        the old file or the new one, never half of one, even if this process dies mid-write."""
        import safetensors.torch  # torch: on first tensor use, so listing runs starts fast
        import torch

        path = self.tensor_path(run_id, name)
        if not isinstance(tensors, Mapping):
            raise RunStoreError(f"tensors must be a dict of name -> tensor, got {type(tensors).__name__}")
        prepared: dict[str, torch.Tensor] = {}
        storages: set[tuple[int, int]] = set()
        for key, tensor in tensors.items():
            if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
                raise RunStoreError(f"tensors must map str to torch.Tensor; {key!r} maps to {type(tensor).__name__}")
            tensor = tensor.detach().to("cpu").contiguous()
            storage = tensor.untyped_storage()
            ident = (storage.data_ptr(), storage.nbytes())
            # safetensors refuses tensors that share memory (tied weights, views): copy those.
            if ident in storages or tensor.nbytes != storage.nbytes():
                tensor = tensor.clone()
            storages.add(ident)
            prepared[key] = tensor
        if self.get_run(run_id) is None:
            raise RunStoreError(f"unknown run {run_id!r}: create it before saving its tensors")
        data = safetensors.torch.save(prepared, metadata={"format": "pt"})
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
        return path

    def load_tensors(self, run_id: str, name: str) -> dict[str, torch.Tensor]:
        """Load a run's tensor file onto the CPU."""
        import safetensors.torch

        path = self.tensor_path(run_id, name)
        try:
            data = path.read_bytes()  # one read: a concurrent replace cannot tear it
        except FileNotFoundError:
            if self.get_run(run_id) is None:
                raise RunStoreError(f"unknown run {run_id!r}") from None
            raise RunStoreError(f"run {run_id!r} has no saved {name!r} (no {path.name})") from None
        try:
            return safetensors.torch.load(data)
        except Exception as error:  # SafetensorError and friends: a damaged or foreign file
            raise RunStoreError(f"{path} is not a readable safetensors file: {error}") from None

    def has_tensors(self, run_id: str, name: str) -> bool:
        return self.tensor_path(run_id, name).is_file()

    def tensor_names(self, run_id: str) -> list[str]:
        """Names of the tensor files a run has, sorted (weights, artifacts)."""
        folder = self.weights_dir / check_run_id(run_id)
        if not folder.is_dir():
            return []
        stems = (p.name[: -len(SUFFIX)] for p in folder.iterdir() if p.name.endswith(SUFFIX))
        return sorted(s for s in stems if TENSOR_NAME.fullmatch(s))

    def save_weights(self, run_id: str, state_dict: Mapping[str, torch.Tensor]) -> Path:
        return self.save_tensors(run_id, WEIGHTS, state_dict)

    def load_weights(self, run_id: str) -> dict[str, torch.Tensor]:
        return self.load_tensors(run_id, WEIGHTS)

