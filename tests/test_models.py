"""The model registry (mnist_core/engine/models.py)."""

from __future__ import annotations

import pytest
import torch

from mnist_core.engine.models import MODELS, build_model


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_maps_a_batch_to_ten_logits_via_features_and_head(name):
    model = build_model(name, dropout=0.1).eval()
    x = torch.randn(3, 1, 28, 28)
    features = model.features(x)
    assert features.ndim == 2 and features.shape[0] == 3
    assert model(x).shape == (3, 10)
    assert torch.allclose(model.head(features), model(x))


def test_parameter_counts_match_the_seed_architectures():
    assert MODELS["linear"].parameter_count == 784 * 10 + 10
    assert MODELS["mlp"].parameter_count == 784 * 128 + 128 + 128 * 10 + 10
    assert MODELS["cnn-small"].parameter_count == (16 * 9 + 16) + (32 * 16 * 9 + 32) + (1568 * 128 + 128) + 1290
    assert MODELS["cnn-classic"].parameter_count == (10 * 25 + 10) + (20 * 10 * 25 + 20) + (320 * 50 + 50) + 510


def test_the_earlier_cnn_best_keeps_the_layers_its_stored_runs_were_saved_with():
    """Runs saved before 2026-11-29 hold these names and shapes; changing them would orphan them."""
    (earlier,) = MODELS["cnn-best"].earlier
    model = earlier(0.25)
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 288_170
    assert state["features.0.weight"].shape == (32, 1, 3, 3) and state["features.20.weight"].shape == (128, 1152)
    assert build_model("cnn-best").state_dict()["features.20.weight"].shape == (128, 512)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(KeyError, match="cnn-small"):
        build_model("resnet")
