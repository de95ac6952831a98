import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from escnn import nn

from epdo.equivariance import equivariance_errors
from epdo.kernels import PDOBasis
from epdo.models import PRESETS, ModelConfig, build_model, count_parameters, preset
from epdo.nn import FieldMaxPool, NeuralePDO, PDOConv, RestrictToRotations, batch_norms

REFERENCE = {"paper-R-fd": 234186, "paper-R-gauss": 234186, "paper-Q-gauss": 229374, "paper-D16-5C16": 525190}
TINY = dict(group_order=4, widths=(4, 4, 4, 4, 4, 4))


def test_paper_presets_match_the_reference_counts_within_one_percent():
    """Every preset builds in a fresh process (bases solved in float64, no cache on disk); its build time is a
    benchmark (benchmarks/construction.py), not a test."""
    code = (
        "from epdo.models import build_model, count_parameters, PRESETS\n"
        "for name in PRESETS:\n"
        "    print(name, count_parameters(build_model(name)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {name: (int(count),) for name, count in map(str.split, out.stdout.splitlines())}
    for name, reference in REFERENCE.items():
        assert abs(rows[name][0] - reference) / reference < 0.01, (name, rows[name][0])
    assert rows["default"][0] == 27454  # escnn's R2Conv network at widths 5,5,7,7,10,11: 27,123


def test_the_seed_flags_name_the_paper_presets():
    from epdo.train import build_parser, model_config

    parse = build_parser().parse_args
    seed = {
        "paper-R-fd": "--model R --dis fd --g 4 --s 4 --reduction 1",
        "paper-R-gauss": "--model R --dis gauss --g 4 --s 4 --reduction 1",
        "paper-Q-gauss": "--model Q --dis gauss --g 4 --s 1 --reduction 2",
        "paper-D16-5C16": "--model R --dis gauss --flip --g 4 --s 1 --reduction 1",
    }
    for name, flags in seed.items():
        assert model_config(parse(flags.split())) == PRESETS[name] == model_config(parse(["--preset", name]))
    assert model_config(parse([])) == PRESETS["default"] == ModelConfig()
    assert model_config(parse(["--preset", "paper-R-fd", "--layer", "reference"])).basis == PDOBasis.reference("fd")
    changed = model_config(parse("--widths 8,8,8,8,8,8 --max-frequency none --bandwidth none --dis fd".split()))
    assert changed == replace(PRESETS["default"], widths=(8,) * 6, basis=PDOBasis("fd", 4, None, None))


@pytest.mark.parametrize("name", ["paper-R-fd", "default"])
def test_reference_layers_are_one_name(name):
    model = build_model(preset(name, layer="reference", group_order=4, widths=(4,) * 6, g=2, s=1))
    basis = PDOBasis.reference(PRESETS[name].basis.discretization)
    layers = [m for m in model.modules() if isinstance(m, NeuralePDO)]
    assert len(layers) == 5 and all(m.normalization == "l1" and m.basis == basis for m in layers)
    assert all(m.mix.filter_expansion.gain == 1.0 for m in layers)
    assert next(m for m in model.modules() if isinstance(m, PDOConv)).basis == basis


def populate_batch_norm(model, images):
    """Running statistics = the exact batch statistics (cumulative average), so eval mode is not degenerate."""
    for module in batch_norms(model):
        module.reset_running_stats()
        module.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(**TINY),
        ModelConfig(**TINY, fields="quotient", reduction=2, g=4),
        ModelConfig(**TINY, flip=True, basis=PDOBasis("rbffd")),
        ModelConfig(**TINY, layer="pdo", basis=PDOBasis("fd", max_frequency=None)),
        ModelConfig(**TINY, layer="escnn"),
        ModelConfig(**TINY, layer="reference", g=2),
        ModelConfig(**TINY, basis=PDOBasis("fd", max_order=3)),
        ModelConfig(group_order=-1, fields="fourier", widths=(2, 2, 2, 2, 2, 2)),
        ModelConfig(group_order=-1, fields="fourier", flip=True, widths=(2, 2, 2, 2, 2, 2)),
        ModelConfig(group_order=-1, fields="fourier", nonlinearity="gated", widths=(1,) * 6),
        ModelConfig(group_order=-1, fields="fourier", nonlinearity="norm", layer="escnn", widths=(1,) * 6),
    ],
    ids=["default", "Q", "D4|5C4-rbffd", "pdo", "escnn", "reference", "order3", "SO(2)", "O(2)", "gated", "norm"],
)
def test_models_are_invariant_to_quarter_turns(config):
    torch.manual_seed(0)
    model = build_model(config)
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
    model = build_model(ModelConfig(**TINY, flip=True, basis=PDOBasis("fd")))
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


def test_pooling_before_the_relu_gives_the_same_bits_as_after_it():
    """The skeleton pools between batch norm and ReLU; the textbook order (ReLU, then pooling) must give the same
    outputs and gradients, bit for bit, in training mode (ties of zeros after the ReLU included)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY))
    textbook = build_model(ModelConfig(**TINY))
    textbook.load_state_dict(model.state_dict())
    modules = textbook.body._modules
    names = list(modules)
    pools = [i for i, name in enumerate(names) if isinstance(modules[name], FieldMaxPool)]
    for i in pools:  # BatchNorm, pooling, ReLU -> BatchNorm, ReLU, pooling
        modules[names[i]], modules[names[i + 1]] = modules[names[i + 1]], modules[names[i]]
    assert [type(modules[names[i]]).__name__ for i in range(pools[0] - 1, pools[0] + 2)] == [
        "FieldBatchNorm", "ReLU", "FieldMaxPool"
    ]  # fmt: skip
    images = torch.rand(4, 1, 28, 28)
    outputs = []
    for network in (model, textbook):
        torch.manual_seed(1)  # the same dropout masks
        logits = network(images)
        logits.square().sum().backward()
        outputs.append([logits, *(p.grad for p in network.parameters())])
    for got, expected in zip(*outputs):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("layer", ["epdo", "pdo"])
def test_the_basis_reaches_every_pdo_layer(layer):
    basis = PDOBasis("fd", max_order=2, max_frequency=1, bandwidth=0.3)
    model = build_model(ModelConfig(**TINY, layer=layer, basis=basis))
    assert [m.basis for m in model.modules() if isinstance(m, (PDOConv, NeuralePDO))] == [basis] * 6
    full = count_parameters(build_model(ModelConfig(**TINY, layer=layer, basis=PDOBasis("fd", max_frequency=None))))
    assert count_parameters(model) < full  # 6 operators instead of 15: fewer basis elements per field pair


@pytest.mark.parametrize("head", [64, 0, 128])
def test_plain_cnn_matches_the_parameter_count(head):
    config = ModelConfig(group_order=4, widths=(8, 8, 12, 12, 16, 16), head=head)
    target = count_parameters(build_model(config))
    cnn = build_model(replace(config, layer="cnn"))
    assert abs(count_parameters(cnn) - target) / target < 0.05, (count_parameters(cnn), target)
    assert cnn(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    linear = [m.out_features for m in cnn.classifier if isinstance(m, torch.nn.Linear)]
    assert linear == ([head, 10] if head else [10])


def test_the_classifier_width():
    """``head`` hidden units: ``(c + 1) h + 2 h + (h + 1) 10`` parameters on ``c`` features; 0: one linear map."""
    config = ModelConfig(**TINY)
    for hidden in (64, 16, 0):
        model = build_model(replace(config, head=hidden))
        expected = 4 * 10 + 10 if hidden == 0 else 5 * hidden + 2 * hidden + (hidden + 1) * 10
        assert count_parameters(model.classifier) == expected
        assert model.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="head must be a non-negative number"):
        ModelConfig(head=-1)


def test_inference_runs_the_exported_network_and_follows_the_weights(monkeypatch):
    import epdo.nn.inference as inference

    model = build_model(ModelConfig(**TINY))
    with torch.no_grad():
        model(torch.rand(16, 1, 28, 28))
    model.eval()
    x = torch.rand(50, 1, 28, 28)
    with torch.no_grad():
        fast = model(x)
    torch.testing.assert_close(fast, model(x).detach(), rtol=1e-5, atol=1e-5)  # gradients on: module by module
    monkeypatch.setattr(inference, "INFERENCE_CHUNK_BYTES", 1)  # one image at a time
    with torch.no_grad():
        torch.testing.assert_close(model(x), fast, rtol=1e-5, atol=1e-5)
        model.classifier[-1].bias.add_(1.0)  # the exported form follows the weights
        torch.testing.assert_close(model(x), fast + 1.0, rtol=1e-5, atol=1e-5)
        norm = batch_norms(model)[0]
        norm.train()  # a batch norm collecting statistics: module by module
        before = norm.running_mean.clone()
        model(x)
        assert not torch.equal(norm.running_mean, before)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, H, W\), got \(2, 3, 28, 28\)"):
        with torch.no_grad():
            model.eval()(torch.rand(2, 3, 28, 28))


def test_inference_follows_the_running_statistics_of_escnns_batch_norms():
    """The exported form is cached until a parameter or a running statistic changes, escnn's IIDBatchNorm2d too."""
    model = build_model(ModelConfig(group_order=-1, fields="fourier", widths=(2,) * 6))
    with torch.no_grad():
        model(torch.rand(8, 1, 28, 28))
        model.eval()
        x = torch.rand(4, 1, 28, 28)
        before = model(x)
        norm = next(m for m in batch_norms(model) if isinstance(m, nn.IIDBatchNorm2d))
        next(b for name, b in norm.named_buffers() if name.endswith("_running_var")).mul_(4.0)
        after = model(x)
        assert not torch.allclose(after, before)
        torch.testing.assert_close(after, model.classifier(model.features(x)), rtol=1e-5, atol=1e-5)


def test_inference_in_several_threads_at_once():
    """Threads that evaluate models while others build their exported form (a harness evaluating two runs at once)."""
    import threading

    models = [build_model(ModelConfig(**TINY)).eval() for _ in range(2)]
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        expected = [m.classifier(m.features(x)) for m in models]
    barrier, failures, results = threading.Barrier(4), [], {}

    def work(index):
        model = models[index % 2]
        barrier.wait()
        try:
            for step in range(3):
                with torch.no_grad():
                    if index < 2:
                        model.classifier[-1].bias.add_(0.0)  # a changed parameter: the exported form is rebuilt
                    results[index, step] = model(x)
        except Exception as error:  # noqa: BLE001
            failures.append(repr(error))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    for (index, _), logits in results.items():
        torch.testing.assert_close(logits, expected[index % 2], rtol=1e-5, atol=1e-5)


def test_config_round_trips_through_a_dictionary():
    gated = preset("so2", nonlinearity="gated")
    for config in [*PRESETS.values(), ModelConfig(layer="reference", basis=PDOBasis("gauss")), gated]:
        assert ModelConfig.from_dict(config.as_dict()) == config
    older = {k: v for k, v in gated.as_dict().items() if k != "nonlinearity"}  # stored before the field existed
    assert ModelConfig.from_dict(older) == preset("so2")


def test_the_so2_presets_match_escnns_count():
    escnn = count_parameters(build_model(preset("so2", layer="escnn", widths=(7, 7, 11, 11, 14, 14))))
    for name, within in (("so2", 0.03), ("so2-sampled", 0.005)):
        ours = count_parameters(build_model(name))
        assert abs(ours - escnn) / escnn < within, (name, ours, escnn)
    with pytest.raises(ValueError, match="or -1 .SO.2. / O.2.. with fourier fields; got -1 with 'regular' fields"):
        ModelConfig(group_order=-1)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="fields must be one of"):
        ModelConfig(fields="R")
    with pytest.raises(ValueError, match="layer must be one of"):
        ModelConfig(layer="none")
    with pytest.raises(ValueError, match="six positive integers"):
        ModelConfig(widths=(4, 4))
    with pytest.raises(ValueError, match="nonlinearity must be one of .'pointwise', 'gated', 'norm'., got 'elu'"):
        ModelConfig(nonlinearity="elu")
    with pytest.raises(ValueError, match="nonlinearity 'gated' needs fourier fields .SO.2. / O.2.., got 'regular'"):
        ModelConfig(nonlinearity="gated")
    with pytest.raises(
        ValueError, match="form 'sampled' needs fourier fields and the pointwise nonlinearity, got 'regular'"
    ):
        ModelConfig(form="sampled")
    with pytest.raises(ValueError, match="form must be one of .'auto', 'diagonal', 'commutant', 'sampled'., got 'x'"):
        ModelConfig(form="x")
    with pytest.raises(ValueError, match="unknown preset .R-fd.; valid ones are default, half, so2, so2-sampled, pap"):
        preset("R-fd")
    with pytest.raises(ValueError, match="g=3 must divide"):
        build_model(ModelConfig(**TINY, g=3))
    with pytest.raises(ValueError, match="images of shape"):
        build_model(ModelConfig(**TINY))(torch.rand(2, 3, 28, 28))


@pytest.mark.parametrize("layer, collapses", [("epdo", False), ("reference", True)])
def test_eval_outputs_depend_on_the_input_after_a_few_training_passes(layer, collapses):
    """With the reference's L1 tap normalization the layers' outputs are ~1000x smaller in variance than their
    inputs, BN's running variance (starting at 1, momentum 0.1) stays far too large, and a fresh model's eval-mode
    logits are the same for every image; the default normalization keeps them input-dependent."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(group_order=8, widths=(4, 4, 6, 6, 8, 8), g=2, layer=layer))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 1, 28, 28))
        logits = model.eval()(torch.rand(16, 1, 28, 28))
    spread = float(logits.std(dim=0).mean() / logits.abs().mean())
    assert (spread < 1e-3) == collapses, spread


def test_reference_layers_keep_the_configured_order():
    """``layer="reference"`` with ``max_order=3``: every layer, the lift and the Neural ePDOs, of order 3."""
    config = ModelConfig(layer="reference", group_order=4, widths=(4,) * 6, g=2, basis=PDOBasis("fd", max_order=3))
    model = build_model(config)
    orders = {m.basis.max_order for m in model.modules() if isinstance(m, (NeuralePDO, PDOConv))}
    assert orders == {3} and config.basis == PDOBasis.reference("fd", 3)


def module_by_module(model, x):
    with torch.enable_grad():  # gradients on: the modules run one by one
        return model(x).detach()


def test_inference_never_differs_from_the_modules():
    """The exported form is an optimization only: a forward hook runs (and its changed output counts), a replaced
    submodule is used, and a changed buffer (a Neural ePDO's stencils) changes the output, each in eval mode without
    gradients exactly as module by module."""
    model = build_model(ModelConfig(**TINY)).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        model(x)  # the exported form is built
        calls = []
        handle = model.body[1].register_forward_hook(
            lambda m, i, o: calls.append(1) or nn.GeometricTensor(o.tensor * 2, o.type)
        )
        hooked = model(x)
        assert calls and torch.allclose(hooked, module_by_module(model, x), atol=1e-5)
        handle.remove()
        plain = model(x)
        assert not torch.allclose(plain, hooked, atol=1e-3)
        relu = next(i for i, m in enumerate(model.body) if isinstance(m, nn.ReLU))
        model.body._modules[f"{relu}"] = nn.ELU(model.body[relu].in_type)  # a module without parameters
        torch.testing.assert_close(model(x), module_by_module(model, x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(x), plain, atol=1e-3)
        before = model(x)
        layer = next(m for m in model.modules() if isinstance(m, NeuralePDO))
        layer.stencils[3] += layer.stencils[5]
        torch.testing.assert_close(model(x), module_by_module(model, x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(x), before, atol=1e-4)


@pytest.mark.parametrize("layer", ["epdo", "pdo", "escnn"])
def test_a_wide_resnet_with_strides_trains_is_invariant_and_exports(layer):
    """Stride-2 stages with strided 1x1 shortcuts: invariant features under quarter turns (training mode, so the
    batch norms use the batch's statistics), a training step that lowers the loss, and an export equal to eval mode."""
    from epdo.models import wide_resnet

    torch.manual_seed(0)
    model = wide_resnet(layer, widths=(2, 3, 4), group_order=4)
    if layer == "epdo":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, NeuralePDO):
                    module.generator_norm.weight.normal_()
    assert sum(isinstance(m, NeuralePDO) for m in model.modules()) == (6 if layer == "epdo" else 0)
    x, labels = torch.rand(8, 1, 29, 29), torch.arange(8)
    with torch.no_grad():
        features = model.features(x)
        torch.testing.assert_close(model.features(torch.rot90(x, 1, (2, 3))), features, rtol=1e-4, atol=1e-5)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        expected = model.classifier(model.features(x))
        torch.testing.assert_close(model.export()(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer", ["epdo", "escnn"])
def test_a_wide_resnet_restricted_d8_d4_d1_keeps_its_reflection_and_exports(layer):
    """D8 -> D4 -> D1 between the stages: invariant to the reflection D1 keeps (x -> -x), no longer to quarter turns,
    and exported to its eval outputs."""
    from epdo.models import wide_resnet

    torch.manual_seed(0)
    model = wide_resnet(layer, widths=(2, 3, 4), group_order=8, flip=True, restrict=True)
    x = torch.rand(4, 1, 29, 29)
    with torch.no_grad():
        features = model.features(x)
        torch.testing.assert_close(model.features(torch.flip(x, (3,))), features, rtol=1e-4, atol=1e-5)
        assert (model.features(torch.rot90(x, 1, (2, 3))) - features).abs().max() > 1e-2
        model.eval()
        torch.testing.assert_close(model.export()(x), model.classifier(model.features(x)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="restrict takes at most 3 stages and an even order"):
        wide_resnet(layer, widths=(2, 2, 2, 2), restrict=True)


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(**TINY, skeleton="tutorial", dropout=0.0),
        ModelConfig(**TINY, skeleton="tutorial", layer="pdo"),
        ModelConfig(**TINY, skeleton="tutorial", layer="escnn"),
        ModelConfig(group_order=-1, fields="fourier", widths=(2,) * 6, skeleton="tutorial"),
    ],
    ids=["epdo", "pdo", "escnn", "SO(2)"],
)
def test_the_tutorial_skeleton_is_escnns_tutorial_shape_invariant_and_exports(config):
    """Its layers have the tutorial's arguments and sizes; 29x29 images (the tutorial's) turn exactly; 28x28 images
    are padded to 29x29, in the modules and in the export alike."""
    torch.manual_seed(0)
    model = build_model(config)
    convs = [m for m in model.body.modules() if isinstance(m, (NeuralePDO, PDOConv, nn.R2Conv))]
    assert [m.kernel_size if isinstance(m, nn.R2Conv) else m.geometry.kernel_size for m in convs] == [7, 5, 5, 5, 5, 5]
    assert [m.padding if isinstance(m, nn.R2Conv) else m.geometry.padding for m in convs] == [1, 2, 2, 2, 2, 1]
    assert isinstance(next(model.body.children()), nn.MaskModule)
    sizes, x = [], nn.GeometricTensor(torch.rand(2, 1, 29, 29), model.in_type)
    for module in model.body.children():
        x = module(x)
        if isinstance(module, (NeuralePDO, PDOConv, nn.R2Conv)):
            sizes.append(x.shape[-1])
    assert sizes == [25, 25, 13, 13, 7, 5] and x.shape[-1] == 1
    images = torch.rand(6, 1, 29, 29)
    populate_batch_norm(model, images)
    with torch.no_grad():
        logits = model(images)
        assert float(logits.std(dim=0).mean()) > 1e-3 * float(logits.abs().mean())  # not degenerate
        for k in (1, 2, 3):
            torch.testing.assert_close(model(torch.rot90(images, k, dims=(2, 3))), logits, rtol=1e-3, atol=1e-3)
        small = torch.rand(3, 1, 28, 28)
        padded = torch.nn.functional.pad(small, (0, 1, 0, 1))
        torch.testing.assert_close(model(small), model(padded), rtol=0, atol=0)
        torch.testing.assert_close(model.export()(small), model.classifier(model.features(small)), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"at most 29 x 29 pixels, got \(1, 1, 30, 30\)"):
        model(torch.rand(1, 1, 30, 30))


def test_the_tutorial_skeleton_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="expected basis.size 5 and a layer other than 'cnn', got 7 and 'epdo'"):
        ModelConfig(skeleton="tutorial", basis=PDOBasis().of_width(7))
    with pytest.raises(ValueError, match="got 5 and 'cnn'"):
        ModelConfig(skeleton="tutorial", layer="cnn")
    with pytest.raises(ValueError, match="skeleton must be one of .'paper', 'tutorial'., got 'resnet'"):
        ModelConfig(skeleton="resnet")
    from epdo.train import build_parser, model_config

    parsed = model_config(build_parser().parse_args(["--skeleton", "tutorial", "--layer", "pdo"]))
    assert parsed == ModelConfig(skeleton="tutorial", layer="pdo")
    older = {k: v for k, v in parsed.as_dict().items() if k != "skeleton"}  # stored before the field existed
    assert ModelConfig.from_dict(older) == ModelConfig(layer="pdo")
