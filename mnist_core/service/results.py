"""Finished runs put to use: their models rebuilt from stored weights, their test-set results,
their embeddings computed once and kept, and how pages name and pick them."""

from __future__ import annotations

import numpy as np
import torch

from mnist_core.engine.data import Mnist
from mnist_core.engine.evaluate import Evaluation, evaluate, evaluation_from_probabilities
from mnist_core.engine.insight import (
    EMBED_METHODS,
    EMBED_N,
    EMBED_SEED,
    SPACES,
    Embedding,
    embed,
    embedding_name,
)
from mnist_core.engine.insight import subset_indices
from mnist_core.engine.models import Classifier, build_for_weights
from mnist_core.engine.naming import run_name
from mnist_core.service import access
from mnist_core.service.access import Person
from mnist_core.service.store import WEIGHTS, RunRecord, RunStore, RunStoreError
from mnist_core.settings import Limits

EVALUATION = "evaluation"  # the tensor file jobs.execute writes next to the weights


def load_run_model(store: RunStore, run_id: str) -> Classifier:
    """Rebuild a run's model from its config and safetensors weights (never pickle)."""
    record = store.get_run(run_id)
    if record is None:
        raise RunStoreError(f"no run {run_id!r}; list runs with `python -m mnist_core runs`")
    if not store.has_tensors(run_id, WEIGHTS):
        raise RunStoreError(f"run {run_id} has no weights (status {record.status}); it did not finish")
    weights = store.load_weights(run_id)
    try:
        model = build_for_weights(record.config["model"], record.config.get("dropout", 0.0), weights)
    except ValueError as err:
        raise RunStoreError(f"run {run_id}: {err}") from None
    model.load_state_dict(weights)
    return model.eval()


def finished_runs(store: RunStore) -> list[RunRecord]:
    """Finished runs that have weights, best test accuracy first (then newest): the first one is
    the sensible default wherever a page asks which model to use."""
    runs = [r for r in store.list_runs(("finished",)) if store.has_tensors(r.id, WEIGHTS)]
    # list_runs is newest first and sorted() is stable, so ties keep the newest first.
    return sorted(runs, key=lambda r: -r.test_accuracy if r.test_accuracy is not None else float("inf"))


def run_label(record: RunRecord) -> str:
    """How a run is named in a selectbox: its readable name (model and what differs from the
    defaults), test accuracy, who launched it, and id."""
    accuracy = "accuracy unknown" if record.test_accuracy is None else f"{record.test_accuracy:.2%}"
    owner = f" · by {record.owner}" if record.owner else ""
    return f"{run_name(record.config)} · {accuracy}{owner} · {record.id}"


def default_run_index(runs: list[RunRecord], wanted: str | None) -> int:
    """Where a run selectbox starts: the run named in the URL (?run=...) if it is in the list,
    else the first (the best)."""
    ids = [r.id for r in runs]
    return ids.index(wanted) if wanted in ids else 0


def load_evaluation(store: RunStore, run_id: str, data: Mnist) -> Evaluation:
    """A run's test-set evaluation, rebuilt from its stored probabilities (no forward pass);
    recomputed from the weights when the probabilities are missing or do not fit this test set."""
    labels = data.test_labels.numpy()
    if store.has_tensors(run_id, EVALUATION):
        probabilities = store.load_tensors(run_id, EVALUATION).get("probabilities")
        if probabilities is not None and tuple(probabilities.shape) == (len(labels), 10):
            return evaluation_from_probabilities(probabilities.numpy().astype(np.float64), labels)
    return evaluate(load_run_model(store, run_id), data.test_images, data.test_labels, data.dataset)


def cached_embedding(
    store: RunStore,
    run_id: str,
    model: Classifier,
    images: torch.Tensor,
    method: str = "pca",
    space: str = "features",
    n: int = EMBED_N,
    seed: int = EMBED_SEED,
    person: Person | None = None,
    limits: Limits | None = None,
) -> Embedding:
    """`embed`, computed once per run and stored next to its weights, loaded thereafter.

    A stored file for a different subset (another n, seed or image set size) is recomputed.
    Storing writes to the run, and t-SNE costs half a minute of the server's CPU, so on a
    shared deployment (`person` given): a read-only demo computes PCA without storing it and
    refuses t-SNE, and only the run's owner or the teacher may start a t-SNE.
    """
    if method not in EMBED_METHODS:
        raise ValueError(f"method must be one of {', '.join(EMBED_METHODS)}, got {method!r}")
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    name = embedding_name(method, space)
    if store.has_tensors(run_id, name):
        try:
            stored = store.load_tensors(run_id, name)
            indices = stored["indices"].numpy()
            if np.array_equal(indices, subset_indices(len(images), n, seed)):
                return Embedding(stored["coords"].numpy(), indices, stored["predictions"].numpy())
        except (RunStoreError, KeyError):
            pass  # damaged or from an older layout: compute it again
    read_only = limits is not None and limits.read_only
    if person is not None and method == "tsne":
        access.require_writable(limits or Limits(), "computing a new t-SNE")
        access.require_manager(person, access.existing(store, run_id), "compute a t-SNE for")
    result = embed(model, images, method, n, seed, space)
    if not read_only:
        store.save_tensors(run_id, name, result.tensors())
    return result
