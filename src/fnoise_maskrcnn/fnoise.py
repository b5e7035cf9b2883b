"""F-Noise: Gaussian noise proportional to the magnitude of latent features."""

import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn, Tensor

__all__ = ["FNoise", "F_NOISE_MODES", "F_NOISE_DISTRIBUTIONS", "F_NOISE_PRESETS"]

F_NOISE_MODES = ("elementwise", "channel", "sample", "tensor")
F_NOISE_DISTRIBUTIONS = ("gaussian", "uniform")
_SQRT3 = math.sqrt(3.0)

#: Named F-Noise settings that reproduce definitions used elsewhere. ``deepmirror-uniform``: the original
#: task's definition, every backbone feature multiplied by U(0.8, 1.2) (std 0.2/sqrt(3) = 0.115).
F_NOISE_PRESETS: Dict[str, Dict[str, object]] = {
    "deepmirror-uniform": {"std": 0.2 / _SQRT3, "mode": "elementwise", "distribution": "uniform", "levels": None},
}


class FNoise(nn.Module):
    r"""Perturbs feature maps with noise proportional to their magnitude, in training mode only.

    For a feature map ``x`` of shape ``[N, C, H, W]`` it returns

    .. math::
        y = x + \sigma \cdot m(x) \cdot \varepsilon, \qquad \varepsilon \text{ i.i.d. per element,}

with ``eps ~ N(0, 1)`` (``distribution="gaussian"``, the default) or ``eps ~ U(-sqrt(3), sqrt(3))``
(``distribution="uniform"``), both of unit variance, so ``sigma`` is the standard deviation of the
relative noise either way,

    where the magnitude ``m(x)`` depends on ``mode``:

    - ``"elementwise"`` (default): ``m = |x|``, shape ``[N, C, H, W]``. Since ``sign(x) * eps`` is
      again a standard normal variable, this is in distribution the multiplicative Gaussian noise of
      Gaussian dropout, ``y = x * (1 + sigma * eps')``, and it is computed in that form: one random
      tensor and one multiplication, with the random tensor the only thing saved for backward. With
      ``"uniform"`` it is ``y = x * u``, ``u ~ U(1 - a, 1 + a)``, ``a = sigma * sqrt(3)``: at
      ``sigma = 0.2 / sqrt(3)`` exactly the U(0.8, 1.2) multiplicative noise of the ``deepmirror-uniform``
      preset.
    - ``"channel"``: mean of ``|x|`` over ``H, W``, shape ``[N, C, 1, 1]``.
    - ``"sample"``: root mean square of ``x`` over ``C, H, W`` (the L2 norm divided by
      ``sqrt(C * H * W)``), shape ``[N, 1, 1, 1]``.
    - ``"tensor"``: mean of ``|x|`` over the whole batch tensor, a scalar.

    Gradients flow through ``m(x)``: ``y`` is differentiated as written. For ``"elementwise"`` this
    gives the Gaussian-dropout gradient ``dy/dx = 1 + sigma * sign(x) * eps``.

    In eval mode, or when ``std == 0``, the input object itself is returned: no copy, no random
    numbers drawn. The module has no parameters or buffers, so it adds nothing to a ``state_dict``.

    Args:
        std: noise scale ``sigma``, finite and ``>= 0``.
        mode: one of ``"elementwise"``, ``"channel"``, ``"sample"``, ``"tensor"``.
        distribution: ``"gaussian"`` or ``"uniform"``: the law of ``eps`` (unit variance either way).
        levels: names of the feature maps to perturb when the input is a dict (e.g. ``("3",)`` for
            C5 of a ResNet body); ``None`` perturbs every map. A plain tensor input is always perturbed.
        available_levels: the names the input dict will have, if known; ``levels`` is then checked
            against them at construction.
        generator: optional ``torch.Generator`` for the noise; by default the global RNG is used, so
            ``torch.manual_seed`` makes the noise reproducible.
        record: if True, keep the last input and perturbation ``y - x`` of each perturbed level,
            detached, in :attr:`recorded_inputs` and :attr:`recorded_perturbations`. Off by
            default, and free when off.

    Shape:
        - Input: ``Tensor[N, C, H, W]`` or an ordered ``Dict[str, Tensor[N, C_i, H_i, W_i]]``, as
          returned by a backbone body.
        - Output: the same structure, shapes and dtypes.
    """

    generator: Optional[torch.Generator]
    levels: Optional[List[str]]
    recorded_inputs: Dict[str, Tensor]
    recorded_perturbations: Dict[str, Tensor]

    def __init__(
        self,
        std: float = 0.1,
        mode: str = "elementwise",
        levels: Optional[Sequence[str]] = None,
        *,
        distribution: str = "gaussian",
        available_levels: Optional[Sequence[str]] = None,
        generator: Optional[torch.Generator] = None,
        record: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std < 0:
            raise ValueError(f"f_noise std must be a finite number >= 0, got {std!r}")
        if mode not in F_NOISE_MODES:
            raise ValueError(f"f_noise mode must be one of {', '.join(F_NOISE_MODES)}; got {mode!r}")
        if distribution not in F_NOISE_DISTRIBUTIONS:
            raise ValueError(
                f"f_noise distribution must be one of {', '.join(F_NOISE_DISTRIBUTIONS)}; got {distribution!r}"
            )
        if levels is not None:
            if isinstance(levels, str):
                raise ValueError(f"f_noise levels must be a sequence of level names, got the string {levels!r}")
            levels = [str(level) for level in levels]
            if not levels:
                raise ValueError("f_noise levels must name at least one level, or be None for all levels")
            if available_levels is not None:
                unknown = [level for level in levels if level not in available_levels]
                if unknown:
                    raise ValueError(
                        f"unknown f_noise level(s) {', '.join(unknown)}; "
                        f"allowed: {', '.join(str(a) for a in available_levels)}"
                    )
        self.std = float(std)
        self.mode = mode
        self.distribution = distribution
        self.levels = levels
        self.generator = generator
        self.record = record
        self.recorded_inputs = {}
        self.recorded_perturbations = {}

    def forward(self, x: Union[Tensor, Dict[str, Tensor]]) -> Union[Tensor, Dict[str, Tensor]]:
        if isinstance(x, Tensor):
            if not self.training or self.std == 0.0:
                return x
            return self.perturb(x, "")
        return self.perturb_features(x)

    def perturb_features(self, features: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Perturbs the selected levels of a backbone body's output; returns a new ordered dict."""
        if not self.training or self.std == 0.0:
            return features
        levels = self.levels
        if levels is not None:
            for level in levels:
                if level not in features:
                    raise ValueError(f"unknown f_noise level {level}; allowed: {', '.join(features.keys())}")
        out: Dict[str, Tensor] = OrderedDict()
        for name, feature in features.items():
            if levels is None or name in levels:
                out[name] = self.perturb(feature, name)
            else:
                out[name] = feature
        return out

    def perturb(self, x: Tensor, name: str) -> Tensor:
        """Returns ``x + std * m(x) * eps`` for one ``[N, C, H, W]`` map, recording it under ``name``."""
        if x.dim() != 4:
            raise ValueError(f"FNoise expects feature maps of shape [N, C, H, W], got {list(x.shape)}")
        uniform = self.distribution == "uniform"
        if self.mode == "elementwise":
            if uniform:
                half_width = self.std * math.sqrt(3.0)
                factor = torch.empty_like(x).uniform_(1.0 - half_width, 1.0 + half_width, generator=self.generator)
            else:
                factor = torch.empty_like(x).normal_(1.0, self.std, generator=self.generator)
            y = x * factor
        else:
            if self.mode == "channel":
                magnitude = x.abs().mean(dim=(2, 3), keepdim=True)
            elif self.mode == "sample":
                numel = x.shape[1] * x.shape[2] * x.shape[3]
                magnitude = torch.linalg.vector_norm(x, dim=(1, 2, 3), keepdim=True) / math.sqrt(numel)
            else:
                magnitude = x.abs().mean()
            if uniform:
                eps = torch.empty_like(x).uniform_(-math.sqrt(3.0), math.sqrt(3.0), generator=self.generator)
            else:
                eps = torch.empty_like(x).normal_(0.0, 1.0, generator=self.generator)
            y = torch.addcmul(x, magnitude, eps, value=self.std)
        if self.record:
            self.recorded_inputs[name] = x.detach()
            self.recorded_perturbations[name] = (y - x).detach()
        return y

    def clear_records(self) -> None:
        """Forgets the recorded inputs and perturbations."""
        self.recorded_inputs = {}
        self.recorded_perturbations = {}

    def extra_repr(self) -> str:
        levels = "all" if self.levels is None else ",".join(self.levels)
        return f"std={self.std}, mode={self.mode}, distribution={self.distribution}, levels={levels}"
