import pytest
import torch
from escnn import nn

from epdo.equivariance import equivariance_errors
from epdo.models import count_parameters, mnist_rot_model
from epdo.nn import NeuralePDO, PDOConv, RestrictToRotations

REFERENCE = {"R": 234186, "Q": 229374, "flip": 525190}


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("R", dict(fields="regular", discretization="fd", g=4, s=4, reduction=1)),
        ("Q", dict(fields="quotient", discretization="gauss", g=4, s=1, reduction=2)),
        ("flip", dict(fields="regular", discretization="gauss", flip=True, g=4, s=1, reduction=1)),
    ],
)
def test_paper_parameter_counts_within_one_percent(name, kwargs):
    count = count_parameters(mnist_rot_model(**kwargs))
    assert abs(count - REFERENCE[name]) / REFERENCE[name] < 0.01, count


def test_static_pdo_baseline_count_is_exact():
    assert count_parameters(mnist_rot_model("regular", "fd", baseline="pdo")) == 1633770


def populate_batch_norm(model, images):
    """Running statistics = the exact batch statistics (cumulative average), so eval mode is not degenerate."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


TINY = dict(group_order=4, widths=(4, 4, 4, 4, 4, 4), g=2, s=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(fields="regular", discretization="fd"),
        dict(fields="quotient", discretization="gauss", reduction=2),
        dict(fields="regular", discretization="rbffd", flip=True),
        dict(fields="regular", discretization="fd", baseline="pdo"),
        dict(fields="regular", discretization="fd", baseline="escnn"),
        dict(fields="regular", discretization="fd", max_order=3),
    ],
    ids=["R-fd", "Q-gauss", "D4|5C4-rbffd", "pdo", "escnn", "R-fd-order3"],
)
def test_models_are_invariant_to_quarter_turns(kwargs):
    torch.manual_seed(0)
    model = mnist_rot_model(**{**TINY, **kwargs})
    images = torch.rand(6, 1, 28, 28)
    populate_batch_norm(model, images)
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (6, 10)
        assert float(logits.std(dim=0).mean()) > 1e-3 * float(logits.abs().mean())  # not degenerate
        for k in (1, 2, 3):
            rotated = model(torch.rot90(images, k, dims=(2, 3)))
            torch.testing.assert_close(rotated, logits, rtol=1e-3, atol=1e-3)


def test_flip_model_first_five_layers_flip_equivariant_but_not_the_whole_model():
    torch.manual_seed(0)
    model = mnist_rot_model(fields="regular", discretization="fd", flip=True, **TINY)
    images = torch.rand(4, 1, 28, 28)
    populate_batch_norm(model, images)
    modules = list(model.body.children())
    cut = next(i for i, m in enumerate(modules) if isinstance(m, RestrictToRotations))
    first_five = nn.SequentialModule(*modules[:cut]).eval()
    x = nn.GeometricTensor(images, model.in_type)
    assert max(equivariance_errors(first_five, x).values()) < 1e-4  # all 8 elements of D4, flips included
    with torch.no_grad():
        flipped = model(torch.flip(images, dims=(3,)))
        assert (flipped - model(images)).abs().max() > 1e-3


@pytest.mark.parametrize("baseline", ["none", "pdo"])
def test_max_order_max_frequency_and_mix_gain_reach_every_pdo_layer(baseline):
    model = mnist_rot_model(**TINY, baseline=baseline, max_order=2, mix_gain=2.5, max_frequency=1)
    orders = [(m.max_order, m.max_frequency) for m in model.modules() if isinstance(m, (PDOConv, NeuralePDO))]
    assert orders == [(2, 1)] * 6
    gains = [m.mix.filter_expansion.gain for m in model.modules() if isinstance(m, NeuralePDO)]
    assert gains == ([2.5] * 5 if baseline == "none" else [])
    full = count_parameters(mnist_rot_model(**TINY, baseline=baseline))
    assert count_parameters(model) < full  # 6 operators instead of 15: fewer basis elements per field pair


def test_plain_cnn_matches_the_parameter_count():
    small = dict(group_order=4, widths=(8, 8, 12, 12, 16, 16), g=4, s=1)
    target = count_parameters(mnist_rot_model(**small, fields="regular"))
    cnn = mnist_rot_model(**small, fields="regular", baseline="cnn")
    assert abs(count_parameters(cnn) - target) / target < 0.05, (count_parameters(cnn), target)
    assert cnn(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="fields must be one of"):
        mnist_rot_model(fields="R")
    with pytest.raises(ValueError, match="six positive integers"):
        mnist_rot_model(widths=(4, 4))
    with pytest.raises(ValueError, match="g=3 must divide"):
        mnist_rot_model(group_order=4, widths=(4,) * 6, g=3, s=1)
    with pytest.raises(ValueError, match="images of shape"):
        mnist_rot_model(**TINY)(torch.rand(2, 3, 28, 28))


@pytest.mark.parametrize("normalization, collapses", [("rms", False), ("l1", True)])
def test_eval_outputs_depend_on_the_input_after_a_few_training_passes(normalization, collapses):
    """Issue 8: with the reference's L1 tap normalization the layers' outputs are ~1000x smaller in variance than
    their inputs, BN's running variance (starting at 1, momentum 0.1) stays far too large, and a fresh model's
    eval-mode logits were the same for every image; the default normalization keeps them input-dependent."""
    torch.manual_seed(0)
    model = mnist_rot_model(group_order=8, widths=(4, 4, 6, 6, 8, 8), g=2, s=1, normalization=normalization)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 1, 28, 28))
        logits = model.eval()(torch.rand(16, 1, 28, 28))
    spread = float(logits.std(dim=0).mean() / logits.abs().mean())
    assert (spread < 1e-3) == collapses, spread
