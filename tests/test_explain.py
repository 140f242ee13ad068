"""Grad-CAM where the answer is known, checked against autodiff; the run's top-losses picture."""

import os

import numpy as np
import pytest

import kflowers
from kflowers.inference.explain import grad_cam
from kflowers.inference.explain import top_losses

SIZE = 128  # a 4x4 last feature map, 2x2 cells per quadrant (at 64 px each cell sees the whole image)
QUADRANTS = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}


def spotted(rng, count, quadrant=None):
    """Dark noise; with `quadrant`, a bright square inside that quadrant (a random one if "any")."""
    images = rng.integers(0, 90, (count, SIZE, SIZE, 3)).astype(np.uint8)
    if quadrant is not None:
        for image in images:
            row, col = QUADRANTS[quadrant] if quadrant != "any" else list(QUADRANTS.values())[rng.integers(4)]
            top, left = row * 64 + rng.integers(4, 28), col * 64 + rng.integers(4, 28)
            image[top : top + 24, left : left + 24] = 255
    return images


@pytest.fixture(scope="module")
def spot_model():
    """Class 1 ("spot") when a bright square sits anywhere; class 0 ("plain") when there is none."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = np.concatenate([spotted(rng, 64), spotted(rng, 64, "any")])
    labels = np.array([0] * 64 + [1] * 64)
    model = kflowers.build_model(num_classes=2, weights=None, image_size=SIZE)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(images, labels, batch_size=32, epochs=4, shuffle=True, verbose=0)
    test = np.concatenate([spotted(rng, 16), spotted(rng, 16, "any")])
    _, accuracy = model.evaluate(test, np.array([0] * 16 + [1] * 16), verbose=0)
    assert accuracy >= 0.9, f"the spot model did not learn ({accuracy})"
    return model


@pytest.mark.slow
@pytest.mark.parametrize("quadrant", QUADRANTS)
def test_grad_cam_lights_up_the_quadrant_holding_the_evidence(spot_model, quadrant):
    images = spotted(np.random.default_rng(1), 8, quadrant)
    heatmaps, logits = grad_cam(spot_model, images, class_index=1)
    assert heatmaps.shape == (8, 4, 4) and (logits.argmax(axis=1) == 1).all()
    assert heatmaps.max() == pytest.approx(1.0) and heatmaps.min() >= 0
    hottest = [tuple(int(i) // 2 for i in np.unravel_index(np.argmax(h), h.shape)) for h in heatmaps]
    assert sum(cell == QUADRANTS[quadrant] for cell in hottest) >= 7, hottest


@pytest.mark.slow
def test_grad_cam_equals_autodiff_grad_cam(spot_model):
    """The closed form (head weights as channel weights) against Grad-CAM by the book, with torch autograd."""
    import keras

    if keras.backend.backend() != "torch":
        pytest.skip("the autodiff reference uses torch autograd")
    import torch

    from kflowers.models.parts import model_parts

    images = spotted(np.random.default_rng(2), 4, "any")
    heatmaps, logits = grad_cam(spot_model, images)
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(spot_model(images)), rtol=1e-4, atol=1e-4)
    parts = model_parts(spot_model)
    features = parts.backbone(parts.preprocess(torch.as_tensor(images)), training=False).detach()
    features.requires_grad_(True)
    scores = parts.head(parts.pool(features))
    predicted = scores.argmax(dim=-1)
    (grads,) = torch.autograd.grad(scores[torch.arange(4), predicted].sum(), features)
    alphas = grads.mean(dim=(1, 2), keepdim=True)
    reference = torch.relu((alphas * features).sum(dim=-1)).detach().cpu().numpy()
    reference /= np.maximum(reference.reshape(4, -1).max(axis=1), 1e-12)[:, None, None]
    np.testing.assert_allclose(heatmaps, reference, atol=1e-5)


def test_top_losses_orders_the_worst_first():
    logits = np.array([[5.0, 0.0], [0.0, 5.0], [1.0, 0.0], [0.0, 0.0]])
    order, losses = top_losses(logits, [0, 0, 0, 1], count=2)
    assert list(order) == [1, 3] and losses[0] > losses[1]


@pytest.mark.parametrize("width, height, shown", [(150, 90, (90, 150)), (1200, 300, (256, 1024))])
def test_grad_cam_picture_shows_the_photo_at_its_own_resolution(tmp_path, width, height, shown):
    from PIL import Image

    from kflowers.inference.explain import explain_images
    from kflowers.inference.explain import gradcam_figure

    (tmp_path / "rose").mkdir()
    path = tmp_path / "rose" / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    names = ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    model = kflowers.build_model(num_classes=5, weights=None, image_size=32)
    figure = gradcam_figure(model, path, names, label="rose")
    photo_ax, overlay_ax, colour_bar = figure.axes
    assert photo_ax.images[0].get_array().shape[:2] == overlay_ax.images[0].get_array().shape[:2] == shown
    assert photo_ax.get_title() == "photo.png\ntrue class: rose"
    assert colour_bar.get_ylabel().startswith("evidence for ")
    written = explain_images(model, [path], str(tmp_path / "out"))  # the true class: the photo's folder
    assert [os.path.basename(p) for p in written] == ["photo.gradcam.png"]
