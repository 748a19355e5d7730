"""What a trained network looks at: templates, filters, feature maps, saliency and embeddings.

Everything works on any `Classifier` (`features` then `head`) and on normalised Nx1x28x28
inputs, so the dashboard can open up every registered model without knowing its layers.
Saliency is written out by hand in a few lines of torch instead of using a library, so the
code itself shows what gradient x input and integrated gradients compute.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from mnist_core.speed.seam import for_inference
from mnist_core.engine.data import normalise
from mnist_core.engine.models import Classifier

SALIENCY_METHODS = ("gradient_x_input", "integrated_gradients")
EMBED_METHODS = ("pca", "tsne")
SPACES = ("features", "pixels")
EMBED_N = 2000  # enough points to see the clusters; t-SNE on them takes seconds on a CPU, not minutes
EMBED_SEED = 0
PCA_BEFORE_TSNE = 50  # t-SNE is run on the top principal components: faster, and less noisy
FEATURE_BATCH = 500
# Layers that keep a conv's map as it is (per channel); the ReLU after them still counts as
# "the ReLU following the conv".
PASS_THROUGH = (nn.BatchNorm2d,)


def is_linear_model(model: Classifier) -> bool:
    """True when the head sees the raw pixels: `features` has no weights of its own."""
    return model.head.in_features == 28 * 28 and not any(True for _ in model.features.parameters())


def linear_templates(model: Classifier) -> np.ndarray:
    """The head's ten 784-weight vectors as 10x28x28 images (float32).

    A linear model scores digit d as w_d . x + b_d, so w_d is a template: positive where ink
    raises the score for d, negative where ink argues against d.
    """
    if not is_linear_model(model):
        raise ValueError("templates exist only for linear models: this model's head does not see pixels")
    return model.head.weight.detach().to("cpu", torch.float32).reshape(-1, 28, 28).numpy().copy()


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The model's Conv2d layers with their dotted names, in forward order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def first_layer_filters(model: Classifier) -> np.ndarray:
    """The first convolution's kernels as (C, k, k), averaged over its input channels."""
    layers = conv_layers(model)
    if not layers:
        raise ValueError("the model has no convolution layer, so it has no filters to show")
    weight = layers[0][1].weight.detach().to("cpu", torch.float32)
    return weight.mean(dim=1).numpy()


def map_sources(features: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """For each Conv2d in `features`, the module whose output is its activation map.

    The ReLU that directly follows the conv (batch-norm in between allowed) when there is one,
    otherwise the conv itself (its raw, possibly negative, responses).
    """
    children = list(features.named_children())
    sources: list[tuple[str, nn.Module]] = []
    for position, (name, module) in enumerate(children):
        if not isinstance(module, nn.Conv2d):
            continue
        source: nn.Module = module
        for _, following in children[position + 1 :]:
            if isinstance(following, nn.ReLU):
                source = following
                break
            if not isinstance(following, PASS_THROUGH):
                break
        sources.append((f"conv{len(sources) + 1} (features.{name})", source))
    return sources


@torch.no_grad()
def feature_maps(model: Classifier, x: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """Activation maps (C x H x W) after every conv layer for one normalised 1x1x28x28 image.

    Taken with forward hooks, removed again before returning. A cached model may be shared by
    several browser sessions at once, so each hook only records forward passes made by the
    thread that registered it.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one normalised image of shape 1x1x28x28, got {tuple(x.shape)}")
    owner = threading.get_ident()
    captured: dict[str, torch.Tensor] = {}
    handles = []
    sources = map_sources(model.features)
    for name, module in sources:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor, name: str = name) -> None:
            if threading.get_ident() == owner:
                captured[name] = output.detach().to("cpu", torch.float32).clone()

        handles.append(module.register_forward_hook(hook))
    try:
        model.eval()
        model.features(x)
    finally:
        for handle in handles:
            handle.remove()
    return [(name, captured[name][0].numpy()) for name, _ in sources]


def black_image() -> torch.Tensor:
    """The all-black 28x28 image, normalised: the 'no ink at all' reference input."""
    return normalise(torch.zeros(1, 28, 28, dtype=torch.uint8))


def logit_gap(model: Classifier, x: torch.Tensor, target: int) -> float:
    """logit_target(x) - logit_target(black image): what integrated gradients must add up to."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.cat([x, black_image()]))
    return float(logits[0, target] - logits[1, target])


def check_target(target: int) -> int:
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= int(target) < 10:
        raise ValueError(f"target must be a digit 0..9, got {target!r}")
    return int(target)


def saliency(
    model: Classifier, x: torch.Tensor, target: int, method: str = "gradient_x_input", steps: int = 32
) -> np.ndarray:
    """Per-pixel attribution (28x28) of `target`'s logit for one normalised image.

    Both methods measure the input against the black image, so pixels without ink get zero:
    - gradient_x_input: d logit / d pixel times (pixel - black), one backward pass.
    - integrated_gradients: the same gradient averaged along the straight path from the black
      image to x (midpoint rule, all `steps` points in one batch). Its attributions add up to
      logit(x) - logit(black) (see `logit_gap`), which a single gradient does not guarantee.
    """
    target = check_target(target)
    if method not in SALIENCY_METHODS:
        raise ValueError(f"method must be one of {', '.join(SALIENCY_METHODS)}, got {method!r}")
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one normalised image of shape 1x1x28x28, got {tuple(x.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    model.eval()
    x = x.detach().to(torch.float32)
    baseline = black_image()
    delta = x - baseline
    if method == "gradient_x_input":
        points = x.clone()
    else:
        alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
        points = baseline + alphas.view(-1, 1, 1, 1) * delta
    points.requires_grad_(True)
    with torch.enable_grad():
        logits = model(points)
        (grads,) = torch.autograd.grad(logits[:, target].sum(), points)
    attribution = grads.mean(dim=0, keepdim=True) * delta
    return attribution[0].sum(dim=0).numpy()


def subset_indices(count: int, n: int = EMBED_N, seed: int = EMBED_SEED) -> np.ndarray:
    """A fixed, seeded choice of min(n, count) indices in 0..count-1, sorted."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:n]
    return np.sort(order.numpy())


@torch.no_grad()
def penultimate(model: Classifier, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """`model.features` vectors (N x D) and predicted digits (N) for uint8 Nx28x28 images, in
    CPU-sized batches (cpu_speed.inference_batch)."""
    model, batch = for_inference(model.eval(), next(model.parameters()).device, FEATURE_BATCH)
    vectors, predictions = [], []
    for start in range(0, len(images), batch):
        feats = model.features(normalise(images[start : start + batch]))
        vectors.append(feats.to(torch.float32))
        predictions.append(model.head(feats).argmax(1))
    return torch.cat(vectors).numpy(), torch.cat(predictions).numpy()


def pca(vectors: np.ndarray, components: int, seed: int = EMBED_SEED) -> np.ndarray:
    """The centred vectors' coordinates along their `components` directions of largest variance.

    torch's randomised low-rank SVD, with a few spare directions and power iterations so the
    leading ones are exact to float precision: on a busy CPU it takes milliseconds where a full
    LAPACK SVD can take seconds. Seeded, and each axis's sign fixed (its largest loading is
    positive), so the same input always gives the same picture.
    """
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    components = min(components, *x.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, _, v = torch.pca_lowrank(x, q=min(components + 8, *x.shape), center=True, niter=4)
    v = v[:, :components]
    signs = torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True)))
    return ((x - x.mean(0)) @ (v * signs)).numpy()


def project(vectors: np.ndarray, method: str, seed: int = EMBED_SEED) -> np.ndarray:
    """N x D -> N x 2 with PCA, or with t-SNE on the top principal components."""
    if method not in EMBED_METHODS:
        raise ValueError(f"method must be one of {', '.join(EMBED_METHODS)}, got {method!r}")
    vectors = np.asarray(vectors, dtype=np.float32)
    if method == "pca":
        return pca(vectors, 2, seed)
    from sklearn.manifold import TSNE  # scikit-learn's manifold module (heavy): only for a t-SNE

    if vectors.shape[1] > PCA_BEFORE_TSNE:
        vectors = pca(vectors, PCA_BEFORE_TSNE, seed)
    perplexity = min(30.0, (len(vectors) - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(vectors).astype(np.float32)


@dataclass
class Embedding:
    """2-D positions of a fixed subset of the test set, with the model's predictions for it."""

    coords: np.ndarray  # N x 2
    indices: np.ndarray  # N test-set indices
    predictions: np.ndarray  # N predicted digits of the run's model

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "coords": torch.from_numpy(np.ascontiguousarray(self.coords, dtype=np.float32)),
            "indices": torch.from_numpy(self.indices.astype(np.int64)),
            "predictions": torch.from_numpy(self.predictions.astype(np.int64)),
        }


def embed(
    model: Classifier,
    images: torch.Tensor,
    method: str = "pca",
    n: int = EMBED_N,
    seed: int = EMBED_SEED,
    space: str = "features",
) -> Embedding:
    """Project a seeded subset of `images` (uint8 Nx28x28) to 2-D.

    space="features" places each image by the model's penultimate vector (what the head sees);
    space="pixels" by its 784 raw pixels, the picture before any training, for comparison.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    indices = subset_indices(len(images), n, seed)
    subset = images[torch.from_numpy(indices)]
    vectors, predictions = penultimate(model, subset)
    if space == "pixels":
        vectors = subset.reshape(len(subset), -1).to(torch.float32).div(255.0).numpy()
    return Embedding(project(vectors, method, seed), indices, predictions)


def embedding_name(method: str, space: str) -> str:
    """The run's tensor file holding this embedding, e.g. 'embedding_pca' or 'embedding_pixels_tsne'."""
    return f"embedding_{method}" if space == "features" else f"embedding_{space}_{method}"


def tile(maps: np.ndarray, columns: int, scale_each: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Lay C x H x W maps out as one mosaic: (image with NaN in the 1-pixel gaps, map index
    of every mosaic pixel with -1 in the gaps, for hover text).

    With scale_each, each map is divided by its own largest absolute value, so a weak channel's
    pattern is as visible as a strong one's (what matters is where it responds, not how much).
    One image with gaps draws far faster in a browser than dozens of small subplots.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or len(maps) == 0:
        raise ValueError(f"expected a non-empty C x H x W array, got shape {maps.shape}")
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    count, height, width = maps.shape
    if scale_each:
        peak = np.abs(maps).reshape(count, -1).max(axis=1)
        maps = maps / np.where(peak > 0, peak, 1.0)[:, None, None]
    columns = min(columns, count)
    rows = -(-count // columns)
    shape = (rows * (height + 1) - 1, columns * (width + 1) - 1)
    mosaic = np.full(shape, np.nan, dtype=np.float32)
    which = np.full(shape, -1, dtype=np.int64)
    for i, image in enumerate(maps):
        top, left = (i // columns) * (height + 1), (i % columns) * (width + 1)
        mosaic[top : top + height, left : left + width] = image
        which[top : top + height, left : left + width] = i
    return mosaic, which


def embedding_frame(embedding: Embedding, labels: torch.Tensor | np.ndarray) -> pd.DataFrame:
    """One row per embedded test image: position, test index, true and predicted digit."""
    truth = np.asarray(labels)[embedding.indices]
    return pd.DataFrame({
        "x": embedding.coords[:, 0],
        "y": embedding.coords[:, 1],
        "index": embedding.indices.astype(np.int64),
        "label": truth.astype(np.int64),
        "prediction": embedding.predictions.astype(np.int64),
        "correct": truth == embedding.predictions,
    })


def selected_indices(points: list[dict] | None) -> list[int]:
    """The test indices (customdata[0]) of the points selected in an embedding chart, in
    selection order without repeats.

    The browser sends customdata as a list, or, when the figure held a numpy array, as a dict
    keyed by position ({"0": index, "1": label, ...}).
    """
    found: dict[int, None] = {}
    for point in points or []:
        custom = point.get("customdata")
        if isinstance(custom, dict):
            custom = custom.get("0", custom.get(0))
        elif isinstance(custom, (list, tuple)) and custom:
            custom = custom[0]
        if isinstance(custom, (int, float, np.integer, np.floating)) and not isinstance(custom, bool):
            found[int(custom)] = None
    return list(found)


def mistakes_first(indices: list[int], frame: pd.DataFrame) -> list[int]:
    """Selected test indices with the misclassified ones first (the interesting ones when a box
    selects hundreds of points), otherwise in the given order; indices not in `frame` are dropped."""
    correct = dict(zip(frame["index"].tolist(), frame["correct"].tolist()))
    return sorted((i for i in indices if i in correct), key=lambda i: correct[i])


@torch.no_grad()
def class_probabilities(model: Classifier, x: torch.Tensor) -> np.ndarray:
    """Softmax probabilities (10) of one normalised 1x1x28x28 image."""
    model.eval()
    return torch.softmax(model(x).to(torch.float32), dim=1)[0].numpy()
