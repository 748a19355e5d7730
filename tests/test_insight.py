"""Templates, filters, feature maps, saliency and embeddings on small untrained models: shapes,
the exact values they must equal, the completeness of integrated gradients, and that an
embedding is computed once per run and read back from the store afterwards."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from mnist_core.engine import insight
from mnist_core.service import results
from mnist_core.service.access import NotAllowed, Person
from mnist_core.settings import Limits
from mnist_core.engine.data import normalise
from mnist_core.engine.models import MODELS, build_model
from tests.synthetic import synthetic_mnist


def model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name).eval()


@pytest.fixture(scope="module")
def digits():
    return synthetic_mnist(n_train=10, n_test=300)


@pytest.fixture()
def image(digits) -> torch.Tensor:
    return normalise(digits.test_images[3:4])


def test_linear_templates_are_the_head_weights():
    linear = model("linear")
    templates = insight.linear_templates(linear)
    assert templates.shape == (10, 28, 28)
    assert np.array_equal(templates[7].ravel(), linear.head.weight[7].detach().numpy())
    assert insight.is_linear_model(linear)


@pytest.mark.parametrize("name", ["mlp", "cnn-small"])
def test_templates_refused_for_models_that_do_not_score_pixels(name):
    assert not insight.is_linear_model(model(name))
    with pytest.raises(ValueError, match="linear"):
        insight.linear_templates(model(name))


@pytest.mark.parametrize("name, shape", [("cnn-small", (16, 3, 3)), ("cnn-classic", (10, 5, 5)),
                                         ("cnn-best", (16, 3, 3))])
def test_first_layer_filters(name, shape):
    net = model(name)
    filters = insight.first_layer_filters(net)
    assert filters.shape == shape
    assert np.allclose(filters, net.features[0].weight.detach()[:, 0].numpy())


def test_no_filters_without_convolutions():
    with pytest.raises(ValueError, match="no convolution"):
        insight.first_layer_filters(model("mlp"))


@pytest.mark.parametrize("name", [n for n in MODELS if n.startswith("cnn")])
def test_one_feature_map_per_conv_layer_and_hooks_removed(name, image):
    net = model(name)
    maps = insight.feature_maps(net, image)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(maps) == len(convs)
    for (_, array), conv in zip(maps, convs):
        assert array.ndim == 3 and array.shape[0] == conv.out_channels
    assert all(not m._forward_hooks for m in net.modules())


def test_feature_maps_are_the_relu_outputs(image):
    net = model("cnn-small")
    (first_name, first), (second_name, second) = insight.feature_maps(net, image)
    f = net.features
    with torch.no_grad():
        expected_first = f[1](f[0](image))[0]
        expected_second = f[4](f[3](f[2](f[1](f[0](image)))))[0]
    assert first.shape == (16, 28, 28) and second.shape == (32, 14, 14)
    assert np.allclose(first, expected_first.numpy(), atol=1e-6)
    assert np.allclose(second, expected_second.numpy(), atol=1e-6)
    assert first_name.startswith("conv1") and second_name.startswith("conv2")


def test_feature_maps_skip_batch_norm_but_not_pooling(image):
    """cnn-fast: conv, BN, ReLU -> the ReLU's output (>= 0). cnn-classic: conv, pool, ReLU -> the
    conv's own output at full resolution (can be negative)."""
    fast = insight.feature_maps(model("cnn-fast"), image)
    assert fast[0][1].shape == (16, 24, 24) and fast[0][1].min() >= 0
    classic = model("cnn-classic")
    maps = insight.feature_maps(classic, image)
    with torch.no_grad():
        raw = classic.features[0](image)[0].numpy()
    assert np.allclose(maps[0][1], raw, atol=1e-6) and maps[0][1].min() < 0


def test_feature_map_hooks_ignore_other_threads(image):
    """A shared cached model: another session's forward pass must not overwrite this one's maps."""
    net = model("cnn-small")
    other = normalise(torch.full((1, 28, 28), 255, dtype=torch.uint8))
    original_forward = net.features.forward

    def forward_with_intruder(x):
        result = original_forward(x)
        thread = threading.Thread(target=lambda: original_forward(other))  # runs after ours
        thread.start()
        thread.join()
        return result

    net.features.forward = forward_with_intruder
    maps = insight.feature_maps(net, image)
    net.features.forward = original_forward
    assert np.allclose(maps[0][1], insight.feature_maps(net, image)[0][1])


def test_feature_maps_need_one_image(image):
    with pytest.raises(ValueError, match="1x1x28x28"):
        insight.feature_maps(model("cnn-small"), torch.cat([image, image]))


def test_saliency_of_a_linear_model_is_weight_times_ink(image):
    """For a linear score both methods are exact: weight x (input - black)."""
    linear = model("linear")
    expected = (linear.head.weight[4].detach().reshape(28, 28) * (image - insight.black_image())[0, 0]).numpy()
    for method in insight.SALIENCY_METHODS:
        attribution = insight.saliency(linear, image, 4, method, steps=4)
        assert attribution.shape == (28, 28)
        assert np.allclose(attribution, expected, atol=1e-5)
    assert np.isclose(expected.sum(), insight.logit_gap(linear, image, 4), atol=1e-4)


@pytest.mark.parametrize("name", ["mlp", "cnn-small", "cnn-fast"])
def test_integrated_gradients_add_up_to_the_logit_change(name, image):
    net = model(name, seed=1)
    for target in (0, 6):
        attribution = insight.saliency(net, image, target, "integrated_gradients", steps=256)
        gap = insight.logit_gap(net, image, target)
        # Riemann-sum error, measured against the size of the attributions that are summed.
        assert abs(attribution.sum() - gap) <= 1e-3 * np.abs(attribution).sum()


def test_black_pixels_get_no_attribution(digits):
    images = digits.test_images[:1].clone()
    images[0, :5] = 0  # the top rows are black
    x = normalise(images)
    for method in insight.SALIENCY_METHODS:
        attribution = insight.saliency(model("cnn-small"), x, 2, method)
        assert np.all(attribution[:5] == 0) and np.any(attribution[5:] != 0)


@pytest.mark.parametrize("bad", [{"target": 10}, {"target": -1}, {"method": "lime"}, {"steps": 0}])
def test_saliency_rejects_bad_arguments(bad, image):
    arguments = {"target": 1, "method": "integrated_gradients", "steps": 8} | bad
    with pytest.raises(ValueError):
        insight.saliency(model("linear"), image, **arguments)


def test_subset_is_seeded_sorted_and_bounded():
    a = insight.subset_indices(1000, 100, seed=3)
    assert np.array_equal(a, insight.subset_indices(1000, 100, seed=3))
    assert not np.array_equal(a, insight.subset_indices(1000, 100, seed=4))
    assert len(np.unique(a)) == 100 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert len(insight.subset_indices(50, 100)) == 50


@pytest.mark.parametrize("space", insight.SPACES)
def test_pca_embedding(space, digits):
    net = model("cnn-small")
    result = insight.embed(net, digits.test_images, "pca", n=120, space=space)
    assert result.coords.shape == (120, 2) and result.coords.dtype == np.float32
    assert np.array_equal(result.indices, insight.subset_indices(300, 120))
    expected = net(normalise(digits.test_images[torch.from_numpy(result.indices)])).argmax(1).numpy()
    assert np.array_equal(result.predictions, expected)
    # The first principal axis carries the most variance.
    assert result.coords[:, 0].var() >= result.coords[:, 1].var()


def test_pca_matches_an_exact_svd(digits):
    pixels = digits.test_images.reshape(300, -1).to(torch.float32).div(255).numpy()
    centred = pixels - pixels.mean(0)
    u, s, _ = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    exact = u[:, :2] * s[:2]
    coords = insight.pca(pixels, 2)
    assert coords.shape == (300, 2)
    assert np.allclose(np.abs(coords), np.abs(exact), atol=1e-3 * np.abs(exact).max())
    assert np.array_equal(coords, insight.pca(pixels, 2))


def test_pixel_pca_separates_the_synthetic_templates(digits):
    """Raw pixels of two different templates must land in different places."""
    result = insight.embed(model("linear"), digits.test_images, "pca", n=300, space="pixels")
    labels = digits.test_labels.numpy()[result.indices]
    centres = np.stack([result.coords[labels == d].mean(0) for d in range(10)])
    spread = np.mean([result.coords[labels == d].std(0).sum() for d in range(10)])
    assert np.linalg.norm(centres[0] - centres[1]) > spread


def test_tsne_embedding(digits):
    result = insight.embed(model("mlp"), digits.test_images, "tsne", n=60)
    assert result.coords.shape == (60, 2) and np.isfinite(result.coords).all()


def test_embed_rejects_unknown_choices(digits):
    with pytest.raises(ValueError, match="method"):
        insight.embed(model("linear"), digits.test_images, "umap-ish", n=10)
    with pytest.raises(ValueError, match="space"):
        insight.embed(model("linear"), digits.test_images, "pca", n=10, space="logits")


def test_cached_embedding_is_computed_once_then_loaded(store, digits, monkeypatch):
    store.create_run("linear-abc", {"model": "linear"}, status="finished")
    net = model("linear")
    first = results.cached_embedding(store, "linear-abc", net, digits.test_images, "pca", n=80)
    assert store.has_tensors("linear-abc", "embedding_pca")

    def must_not_run(*args, **kwargs):
        raise AssertionError("recomputed instead of loading from the store")

    monkeypatch.setattr(results, "embed", must_not_run)
    again = results.cached_embedding(store, "linear-abc", net, digits.test_images, "pca", n=80)
    assert np.array_equal(first.coords, again.coords)
    assert np.array_equal(first.indices, again.indices)
    assert np.array_equal(first.predictions, again.predictions)
    # Another subset size or another space is a different embedding: it is computed.
    with pytest.raises(AssertionError, match="recomputed"):
        results.cached_embedding(store, "linear-abc", net, digits.test_images, "pca", n=40)
    with pytest.raises(AssertionError, match="recomputed"):
        results.cached_embedding(store, "linear-abc", net, digits.test_images, "pca", space="pixels", n=80)


def test_embedding_names():
    assert insight.embedding_name("pca", "features") == "embedding_pca"
    assert insight.embedding_name("tsne", "pixels") == "embedding_pixels_tsne"


def test_tile_lays_maps_out_with_gaps():
    maps = np.stack([np.full((2, 3), v, dtype=np.float32) for v in (1.0, -4.0, 0.0)])
    mosaic, which = insight.tile(maps, columns=2)
    assert mosaic.shape == (5, 7) and which.shape == (5, 7)
    assert np.all(mosaic[:2, :3] == 1.0) and np.all(mosaic[:2, 4:] == -1.0)  # each map scaled to 1
    assert np.all(mosaic[3:, :3] == 0.0)  # an all-zero map stays zero
    assert np.isnan(mosaic[:, 3]).all() and np.isnan(mosaic[2]).all() and np.isnan(mosaic[3:, 4:]).all()
    assert which[0, 0] == 0 and which[0, 4] == 1 and which[4, 2] == 2 and which[2, 0] == -1
    raw, _ = insight.tile(maps, columns=5, scale_each=False)
    assert raw.shape == (2, 11) and raw[0, 4] == -4.0


def test_embedding_frame_and_selection():
    embedding = insight.Embedding(
        coords=np.array([[0, 1], [2, 3]], dtype=np.float32), indices=np.array([5, 9]),
        predictions=np.array([3, 1]),
    )
    labels = np.arange(10) % 4  # label of 5 is 1, of 9 is 1
    frame = insight.embedding_frame(embedding, labels)
    assert frame["label"].tolist() == [1, 1] and frame["correct"].tolist() == [False, True]
    assert frame["index"].tolist() == [5, 9] and frame["x"].tolist() == [0, 2]
    assert insight.selected_indices([{"customdata": [9, 1, 1], "x": 2}]) == [9]
    assert insight.selected_indices([{"x": 2}, {"customdata": [5.0, 1, 3]}, {"customdata": [9, 1, 1]}]) == [5, 9]
    assert insight.selected_indices([{"customdata": {"0": 55, "1": 0, "2": 0}}]) == [55]  # as browsers send it
    assert insight.selected_indices([{"customdata": [7]}, {"customdata": [7]}]) == [7]
    assert insight.selected_indices([]) == [] and insight.selected_indices(None) == []
    assert insight.mistakes_first([9, 5, 4], frame) == [5, 9]  # 5 is wrong, 4 is not in the frame


def test_class_probabilities(image):
    probabilities = insight.class_probabilities(model("cnn-small"), image)
    assert probabilities.shape == (10,) and np.isclose(probabilities.sum(), 1.0, atol=1e-5)


def test_a_damaged_stored_embedding_is_computed_again(store, digits):
    store.create_run("mlp-abc", {"model": "mlp"}, status="finished")
    store.tensor_path("mlp-abc", "embedding_pca").parent.mkdir(parents=True)
    store.tensor_path("mlp-abc", "embedding_pca").write_bytes(b"not a safetensors file")
    result = results.cached_embedding(store, "mlp-abc", model("mlp"), digits.test_images, "pca", n=50)
    assert result.coords.shape == (50, 2)
    assert np.array_equal(store.load_tensors("mlp-abc", "embedding_pca")["coords"].numpy(), result.coords)


def test_embeddings_on_a_shared_deployment_respect_owner_and_read_only(store, digits):
    """t-SNE costs the server half a minute: only the run's owner or the teacher may start one;
    a read-only demo stores nothing and computes no t-SNE at all."""
    store.enqueue("linear-adas", {"model": "linear"}, "Ada")
    store.request_stop("linear-adas")
    net, bob, ada = model("linear"), Person("Bob"), Person("Ada")
    with pytest.raises(NotAllowed, match="owner or the teacher"):
        results.cached_embedding(store, "linear-adas", net, digits.test_images, "tsne", n=30, person=bob, limits=Limits())
    read_only = Limits(read_only=True)
    with pytest.raises(NotAllowed, match="read-only"):
        results.cached_embedding(store, "linear-adas", net, digits.test_images, "tsne", n=30, person=ada, limits=read_only)
    pca = results.cached_embedding(store, "linear-adas", net, digits.test_images, "pca", n=30, person=bob, limits=read_only)
    assert pca.coords.shape == (30, 2) and not store.has_tensors("linear-adas", "embedding_pca")  # shown, not stored
    results.cached_embedding(store, "linear-adas", net, digits.test_images, "tsne", n=30, person=ada, limits=Limits())
    assert store.has_tensors("linear-adas", "embedding_tsne")
