"""FNoise: noise distribution per mode, level selection, eval identity, gradients, RNG, recording, errors."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch

from fnoise_maskrcnn import F_NOISE_MODES, FNoise

SIGMA = 0.25
#: Tolerance in standard errors for the statistical checks: a false alarm has probability < 1e-8.
Z = 6.0


def heterogeneous_features(seed: int = 0) -> torch.Tensor:
    """A ``[4, 64, 32, 32]`` map whose samples and channels have scales spread over two decades.

    With such a map a wrong magnitude (e.g. the channel mean where the sample RMS is meant) changes
    the spread of ``(y - x) / m(x)`` by far more than the statistical tolerance.
    """
    # Seeds far from those of the noise: the same seed would give the same uniform stream.
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(4, 64, 32, 32, generator=g)
    sample_scale = torch.logspace(-1, 1, 4).view(4, 1, 1, 1)
    channel_scale = torch.logspace(-1, 1, 64)[torch.randperm(64, generator=g)].view(1, 64, 1, 1)
    return x * sample_scale * channel_scale + 0.1 * channel_scale


def reference_magnitude(x: torch.Tensor, mode: str) -> torch.Tensor:
    """``m(x)`` computed here independently of the implementation, in float64."""
    x = x.double()
    if mode == "elementwise":
        return x.abs()
    if mode == "channel":
        return x.abs().mean(dim=(2, 3), keepdim=True)
    if mode == "sample":
        return x.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    if mode == "tensor":
        return x.abs().mean()
    raise AssertionError(mode)


def feature_dict() -> OrderedDict[str, torch.Tensor]:
    """What a ResNet-50 body returns for a 64 px batch of 2: levels "0" (C2) ... "3" (C5)."""
    g = torch.Generator().manual_seed(2000)
    shapes = {"0": (2, 256, 16, 16), "1": (2, 512, 8, 8), "2": (2, 1024, 4, 4), "3": (2, 2048, 2, 2)}
    return OrderedDict((name, torch.randn(shape, generator=g)) for name, shape in shapes.items())


#: The modes whose noise is proportional to a magnitude m(x) (not "additive-hw", the seed report's
#: definition).
MAGNITUDE_MODES = ("elementwise", "channel", "sample", "tensor")


@pytest.mark.parametrize("mode", MAGNITUDE_MODES)
def test_normalised_perturbation_is_standard_normal_times_sigma(mode):
    x = heterogeneous_features()
    torch.manual_seed(0)
    y = FNoise(SIGMA, mode).train()(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    r = ((y.double() - x.double()) / reference_magnitude(x, mode)).flatten()
    n = r.numel()
    # Standard errors of the sample mean and of the sample std of n i.i.d. N(0, sigma^2) values.
    assert abs(r.mean().item()) < Z * SIGMA / math.sqrt(n)
    assert abs(r.std().item() - SIGMA) < Z * SIGMA / math.sqrt(2 * (n - 1))
    # The same holds within each sample, so the magnitude is per sample/channel as documented.
    per_sample = r.view(4, -1)
    m = per_sample.shape[1]
    assert (per_sample.std(dim=1) - SIGMA).abs().max().item() < Z * SIGMA / math.sqrt(2 * (m - 1))
    # Gaussian, not merely of the right variance: P(|eps| < 1) = 0.6827 (binomial standard error).
    inside = (r.abs() < SIGMA).double().mean().item()
    p = math.erf(1 / math.sqrt(2))
    assert abs(inside - p) < Z * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("mode", MAGNITUDE_MODES)  # additive-hw shares one plane across channels by design
def test_noise_is_independent_of_sign_and_between_elements(mode):
    x = heterogeneous_features(seed=3)
    torch.manual_seed(1)
    r = ((FNoise(SIGMA, mode).train()(x).double() - x.double()) / reference_magnitude(x, mode)).flatten()
    n = r.numel()
    # eps is uncorrelated with sign(x) (elementwise: x * (1 + sigma * eps')) and with its neighbour.
    sign = x.flatten().sign().double()
    assert abs((r * sign).mean().item()) < Z * SIGMA / math.sqrt(n)
    lag_correlation = (r[1:] * r[:-1]).mean().item() / SIGMA**2
    assert abs(lag_correlation) < Z / math.sqrt(n)


def test_selected_levels_only_and_order_kept():
    features = feature_dict()
    torch.manual_seed(0)
    out = FNoise(SIGMA, levels=("3",)).train()(features)
    assert list(out) == list(features)
    for name in ("0", "1", "2"):
        assert out[name] is features[name]
    assert not torch.equal(out["3"], features["3"])


def test_all_levels_by_default():
    features = feature_dict()
    torch.manual_seed(0)
    out = FNoise(SIGMA).train()(features)
    for name, feature in features.items():
        assert out[name] is not feature and not torch.equal(out[name], feature)


@pytest.mark.parametrize("mode", F_NOISE_MODES)
def test_eval_mode_and_zero_std_return_the_input_and_draw_no_random_numbers(mode):
    features, tensor = feature_dict(), heterogeneous_features()
    rng_state = torch.random.get_rng_state()
    assert FNoise(SIGMA, mode).eval()(tensor) is tensor
    assert FNoise(SIGMA, mode).eval()(features) is features
    assert FNoise(0.0, mode).train()(tensor) is tensor
    assert FNoise(0.0, mode).train()(features) is features
    assert torch.equal(torch.random.get_rng_state(), rng_state)


def test_no_parameters_or_buffers():
    module = FNoise(SIGMA, "channel", ("3",), record=True)
    assert module.state_dict() == {}
    assert list(module.parameters()) == [] and list(module.buffers()) == []


def test_elementwise_gradient_is_the_multiplicative_noise():
    x = heterogeneous_features().requires_grad_()
    torch.manual_seed(0)
    y = FNoise(SIGMA).train()(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    # y = x * (1 + sigma * eps'), so dy/dx = y / x: the Gaussian-dropout gradient.
    torch.testing.assert_close(grad, (y / x).detach())


@pytest.mark.parametrize("mode", ["channel", "sample", "tensor"])
def test_gradient_flows_through_the_magnitude(mode):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    generator = torch.Generator()
    module = FNoise(SIGMA, mode, generator=generator).train()

    def perturb(inp: torch.Tensor) -> torch.Tensor:
        generator.manual_seed(0)  # the same noise at every evaluation, so the map is deterministic
        return module(inp)

    assert torch.autograd.gradcheck(perturb, (x,))
    # ... and the magnitude's contribution is not zero (with m(x) detached, dy/dx would be 1).
    (grad,) = torch.autograd.grad(perturb(x).sum(), x)
    assert (grad - 1).abs().min() > 0


def _reference_magnitude(x: torch.Tensor, mode: str) -> torch.Tensor:
    """m(x) as the docstring defines it, written out op by op."""
    if mode == "channel":
        return x.abs().mean(dim=(2, 3), keepdim=True)
    if mode == "sample":  # the L2 norm / sqrt(C H W); autograd's vector_norm takes the subgradient 0 at 0
        return torch.linalg.vector_norm(x, dim=(1, 2, 3), keepdim=True) / (x[0].numel() ** 0.5)
    return x.abs().mean()


@pytest.mark.parametrize("distribution", ["gaussian", "uniform"])
@pytest.mark.parametrize("mode", ["channel", "sample", "tensor"])
def test_pooled_modes_match_the_formula_and_its_autograd_gradient(mode, distribution):
    # ReLU outputs, as the body gives them: many exact zeros, where |x| has the subgradient 0.
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64).relu_()
    x[1] = 0.0  # an all-zero sample: m = 0 in every mode but tensor
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    upstream = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    module = FNoise(0.3, mode, distribution=distribution, generator=torch.Generator().manual_seed(5)).train()
    y = module(x)
    (grad,) = torch.autograd.grad(y, x, upstream)

    generator = torch.Generator().manual_seed(5)
    eps = torch.empty_like(x)
    eps = (
        eps.normal_(generator=generator)
        if distribution == "gaussian"
        else eps.uniform_(-(3**0.5), 3**0.5, generator=generator)
    )
    leaf = x.detach().clone().requires_grad_()
    magnitude = _reference_magnitude(leaf, mode)
    expected_y = leaf + 0.3 * magnitude * eps
    (expected_grad,) = torch.autograd.grad(expected_y, leaf, upstream)
    torch.testing.assert_close(y.detach(), expected_y.detach())
    torch.testing.assert_close(grad, expected_grad)
    assert torch.isfinite(grad).all() and not torch.equal(grad, upstream)


def test_gradients_reach_the_inputs_of_every_level():
    features = OrderedDict((k, v.requires_grad_()) for k, v in feature_dict().items())
    out = FNoise(SIGMA, "sample").train()(features)
    torch.autograd.backward(list(out.values()), [torch.ones_like(v) for v in out.values()])
    for feature in features.values():
        assert feature.grad is not None and torch.isfinite(feature.grad).all()
        assert not torch.equal(feature.grad, torch.ones_like(feature.grad))


@pytest.mark.parametrize("mode", F_NOISE_MODES)
def test_reproducible_under_manual_seed_and_with_a_generator(mode):
    x = heterogeneous_features()
    module = FNoise(SIGMA, mode).train()
    torch.manual_seed(5)
    first = module(x)
    torch.manual_seed(5)
    assert torch.equal(module(x), first)
    assert not torch.equal(module(x), first)

    seeded = [FNoise(SIGMA, mode, generator=torch.Generator().manual_seed(7)).train() for _ in range(2)]
    rng_state = torch.random.get_rng_state()
    assert torch.equal(seeded[0](x), seeded[1](x))
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global RNG is left alone
    other = FNoise(SIGMA, mode, generator=torch.Generator().manual_seed(8)).train()
    assert not torch.equal(other(x), seeded[0](x))


def test_dtype_preserved():
    x = heterogeneous_features().double()
    for mode in F_NOISE_MODES:
        assert FNoise(SIGMA, mode).train()(x).dtype == torch.float64


def test_recording_off_by_default_keeps_nothing():
    module = FNoise(SIGMA).train()
    module(feature_dict())
    module(heterogeneous_features())
    assert module.recorded_inputs == {} and module.recorded_perturbations == {}


def test_recording_keeps_the_last_detached_perturbation_of_selected_levels():
    features = OrderedDict((k, v.requires_grad_()) for k, v in feature_dict().items())
    module = FNoise(SIGMA, "channel", levels=("1", "3"), record=True).train()
    module(features)
    out = module(features)
    assert sorted(module.recorded_perturbations) == ["1", "3"] == sorted(module.recorded_inputs)
    for name in ("1", "3"):
        perturbation = module.recorded_perturbations[name]
        assert not perturbation.requires_grad and not module.recorded_inputs[name].requires_grad
        torch.testing.assert_close(perturbation, (out[name] - features[name]).detach())
        assert torch.equal(module.recorded_inputs[name], features[name].detach())
    module.clear_records()
    assert module.recorded_inputs == {} and module.recorded_perturbations == {}
    module.eval()(features)
    assert module.recorded_perturbations == {}


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"std": -0.1}, ["std", ">= 0"]),
        ({"std": float("nan")}, ["std", "finite"]),
        ({"std": float("inf")}, ["std", "finite"]),
        ({"std": "0.1"}, ["std", "number"]),
        ({"std": True}, ["std", "number"]),
        ({"mode": "gaussian"}, ["mode", *F_NOISE_MODES, "gaussian"]),
        ({"levels": "3"}, ["levels", "sequence"]),
        ({"levels": ()}, ["levels", "at least one"]),
        (
            {"levels": ("3", "p6"), "available_levels": ("0", "1", "2", "3")},
            ["level", "p6", "allowed", "0, 1, 2, 3"],
        ),
    ],
)
def test_bad_arguments_raise_value_error_naming_argument_and_allowed_values(kwargs, words):
    with pytest.raises(ValueError) as info:
        FNoise(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_unknown_level_at_forward_names_the_available_ones():
    with pytest.raises(ValueError, match=r"level.*p6.*allowed: 0, 1, 2, 3"):
        FNoise(SIGMA, levels=("p6",)).train()(feature_dict())


def test_non_4d_input_rejected():
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        FNoise(SIGMA).train()(torch.randn(4, 8))


@pytest.mark.parametrize("mode", F_NOISE_MODES)
def test_torchscript_matches_eager(mode):
    eager = FNoise(SIGMA, mode, levels=("1", "3")).train()
    scripted = torch.jit.script(eager)
    features, tensor = feature_dict(), heterogeneous_features()
    for inp in (tensor, features):
        torch.manual_seed(3)
        expected = eager(inp)
        torch.manual_seed(3)
        got = scripted(inp)
        if isinstance(inp, torch.Tensor):
            assert torch.equal(got, expected)
        else:
            assert list(got) == list(expected)
            for name in expected:
                assert torch.equal(got[name], expected[name])
    scripted.eval()
    assert torch.equal(scripted(tensor), tensor)
    out = scripted(features)
    assert all(torch.equal(out[name], features[name]) for name in features)
