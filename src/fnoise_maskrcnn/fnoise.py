"""F-Noise: noise proportional to the magnitude of latent features, and its one configuration object."""

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "FNoise",
    "FNoiseConfig",
    "FNoiseSchedule",
    "noise_to_signal",
    "F_NOISE_MODES",
    "F_NOISE_DISTRIBUTIONS",
    "F_NOISE_PRESETS",
    "F_NOISE_SCHEDULES",
]

F_NOISE_MODES = ("elementwise", "channel", "sample", "tensor", "additive-hw")
F_NOISE_DISTRIBUTIONS = ("gaussian", "uniform")
F_NOISE_SCHEDULES = ("constant", "linear", "cosine", "step")
_SQRT3 = math.sqrt(3.0)


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
        - ``"additive-hw"``: not proportional to the magnitude; ``y = x + mean(x) + sigma * eps`` with one
          ``eps`` of shape ``[H, W]`` broadcast over batch and channels, i.e. noise drawn from
          ``N(mean(x), sigma^2)`` per pixel: the definition of the seed report 001 (preset
          ``seed-report-001``).

        Gradients flow through ``m(x)``: ``y`` is differentiated as written. For ``"elementwise"`` this
        gives the Gaussian-dropout gradient ``dy/dx = 1 + sigma * sign(x) * eps``. The pooled modes
        (channel, sample, tensor) use a hand-written backward with the gradient autograd would give
        (:class:`_PooledNoise`), which makes fewer full-size passes; TorchScript runs the same forward
        and lets autograd differentiate it.

        In eval mode, or when ``std == 0``, the input object itself is returned: no copy, no random
        numbers drawn. The module has no parameters or buffers, so it adds nothing to a ``state_dict``.

        Args:
            std: noise scale ``sigma``, finite and ``>= 0``; or a mapping level name -> sigma (e.g.
                ``{"0": 0.0, "3": 0.2}``): only the named levels are perturbed, each with its own sigma, and a
                level with sigma 0 is passed through untouched at no cost. :attr:`scale` multiplies every
                sigma (a schedule sets it per iteration; 1 by default).
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

    generator: torch.Generator | None
    levels: list[str] | None
    level_std: dict[str, float]
    recorded_inputs: dict[str, Tensor]
    recorded_perturbations: dict[str, Tensor]

    def __init__(
        self,
        std: float | Mapping[str, float] = 0.1,
        mode: str = "elementwise",
        levels: Sequence[str] | None = None,
        *,
        distribution: str = "gaussian",
        available_levels: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        record: bool = False,
    ) -> None:
        super().__init__()
        level_std: dict[str, float] = {}
        if isinstance(std, Mapping):
            if levels is not None:
                raise ValueError("f_noise: give either a per-level std mapping or levels, not both")
            if not std:
                raise ValueError("f_noise std mapping must name at least one level")
            level_std = {str(level): _check_std(value) for level, value in std.items()}
            levels = list(level_std)
            std = max(level_std.values())
        else:
            std = _check_std(std)
        _check_choice("mode", mode, F_NOISE_MODES)
        _check_choice("distribution", distribution, F_NOISE_DISTRIBUTIONS)
        if levels is not None:
            if isinstance(levels, str):
                raise ValueError(
                    f"f_noise levels must be a sequence of level names, got the string {levels!r}"
                )
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
        self.level_std = level_std
        #: Multiplier of every sigma, set per iteration by a schedule (see :class:`FNoiseSchedule`).
        self.scale = 1.0
        self.mode = mode
        self.distribution = distribution
        self.levels = levels
        self.generator = generator
        self.record = record
        self.recorded_inputs = {}
        self.recorded_perturbations = {}

    def std_for(self, name: str) -> float:
        """The sigma in force for level ``name`` (0 for levels not perturbed), schedule scale included."""
        levels = self.levels
        if levels is not None and name not in levels:
            return 0.0
        base = self.level_std[name] if name in self.level_std else self.std
        return base * self.scale

    def forward(self, x: Tensor | dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
        if isinstance(x, Tensor):
            if not self.training or self.std * self.scale == 0.0:
                return x
            return self._perturb(x, "", self.std * self.scale)
        return self.perturb_features(x)

    def perturb_features(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Perturbs the selected levels of a backbone body's output; returns a new ordered dict."""
        if not self.training or self.std * self.scale == 0.0:
            return features
        levels = self.levels
        if levels is not None:
            for level in levels:
                if level not in features:
                    raise ValueError(f"unknown f_noise level {level}; allowed: {', '.join(features.keys())}")
        out: dict[str, Tensor] = OrderedDict()
        for name, feature in features.items():
            std = self.std_for(name)
            out[name] = self._perturb(feature, name, std) if std > 0.0 else feature  # sigma 0 costs nothing
        return out

    def perturb(self, x: Tensor, name: str) -> Tensor:
        """Returns ``x + sigma * m(x) * eps`` for one ``[N, C, H, W]`` map with the sigma of level ``name``
        (:meth:`std_for`; any name with a scalar ``std`` and no ``levels``), recording it under ``name``."""
        return self._perturb(x, name, self.std_for(name))

    def _perturb(self, x: Tensor, name: str, std: float) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"FNoise expects feature maps of shape [N, C, H, W], got {list(x.shape)}")
        uniform = self.distribution == "uniform"
        if self.mode == "elementwise":
            if uniform:
                half_width = std * math.sqrt(3.0)
                factor = torch.empty_like(x).uniform_(
                    1.0 - half_width, 1.0 + half_width, generator=self.generator
                )
            else:
                factor = torch.empty_like(x).normal_(1.0, std, generator=self.generator)
            y = x * factor
        elif self.mode == "additive-hw":
            plane = torch.empty(x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
            if uniform:
                plane.uniform_(-math.sqrt(3.0), math.sqrt(3.0), generator=self.generator)
            else:
                plane.normal_(0.0, 1.0, generator=self.generator)
            y = x + (x.mean() + std * plane)
        else:
            if uniform:
                eps = torch.empty_like(x).uniform_(-math.sqrt(3.0), math.sqrt(3.0), generator=self.generator)
            else:
                eps = torch.empty_like(x).normal_(0.0, 1.0, generator=self.generator)
            if torch.jit.is_scripting() or not x.requires_grad:
                y = _pooled_noise(x, eps, std, self.mode)
            else:
                y = _pooled_noise_fused(x, eps, std, self.mode)
        if self.record:
            self.recorded_inputs[name] = x.detach()
            self.recorded_perturbations[name] = (y - x).detach()
        return y

    def clear_records(self) -> None:
        """Forgets the recorded inputs and perturbations."""
        self.recorded_inputs = {}
        self.recorded_perturbations = {}

    @torch.jit.unused
    @contextlib.contextmanager
    def recording(self) -> Iterator["FNoise"]:
        """Records inputs and perturbations inside the ``with`` block; on leaving it, recording is off
        again and the records are dropped."""
        self.record = True
        try:
            yield self
        finally:
            self.record = False
            self.clear_records()

    @torch.jit.unused
    @contextlib.contextmanager
    def overridden(self, **settings: Any) -> Iterator["FNoise"]:
        """Temporarily sets attributes (``std``, ``mode``, ``levels``, ``scale``, ``generator``,
        ``training`` ...) and restores every one of them, and the mode, on leaving the block."""
        saved = {name: getattr(self, name) for name in settings}
        training = self.training
        try:
            for name, value in settings.items():
                setattr(self, name, value)
            yield self
        finally:
            for name, value in saved.items():
                setattr(self, name, value)
            self.train(training)

    @torch.jit.unused
    def noise_to_signal(self) -> dict[str, float]:
        """``||perturbation|| / ||input||`` per recorded level (see :func:`noise_to_signal`)."""
        return {
            name: noise_to_signal(x, self.recorded_perturbations[name])
            for name, x in self.recorded_inputs.items()
        }

    def extra_repr(self) -> str:
        levels = "all" if self.levels is None else ",".join(self.levels)
        std = self.level_std if self.level_std else self.std
        return f"std={std}, mode={self.mode}, distribution={self.distribution}, levels={levels}"


def _magnitude(x: Tensor, mode: str) -> Tensor:
    """``m(x)`` of a pooled mode for ``x: [N, C, H, W]``: ``[N, C, 1, 1]`` (channel), ``[N, 1, 1, 1]``
    (sample) or a scalar (tensor). One fused reduction each (``vector_norm``, no ``|x|`` temporary)."""
    n, c, h, w = x.shape
    if mode == "channel":
        return torch.linalg.vector_norm(x, 1.0, dim=(2, 3), keepdim=True) / (h * w)
    if mode == "sample":
        return torch.linalg.vector_norm(x, 2.0, dim=(1, 2, 3), keepdim=True) / math.sqrt(c * h * w)
    return torch.linalg.vector_norm(x, 1.0) / x.numel()


def _pooled_noise(x: Tensor, eps: Tensor, std: float, mode: str) -> Tensor:
    """``x + std * m(x) * eps`` for the pooled modes, differentiated by autograd op by op."""
    return torch.addcmul(x, _magnitude(x, mode), eps, value=std)


class _PooledNoise(torch.autograd.Function):
    """:func:`_pooled_noise` with a hand-written backward; the same forward ops, so the same output.

    ``dL/dx = g + std * dm/dx * sum(g * eps)`` with the sum over the pooled dimensions, taken as a batched
    dot product, and ``dm/dx`` equal to ``sign(x) / (H * W)`` (channel), ``x / (m * C * H * W)`` (sample,
    0 where ``m = 0``) or ``sign(x) / numel`` (tensor): the subgradients autograd uses for ``vector_norm``.
    Autograd's graph of the same formula writes four full-size temporaries in backward (``g * eps``,
    ``sign(x)``, its product with the expanded sum, the accumulation with ``g``); this writes two (``sign``
    and the result, in place) and reads ``g`` and ``eps`` once in a BLAS dot product. It saves the same
    tensors as autograd would (``x``, ``eps``, ``m``).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, eps: Tensor, std: float, mode: str) -> Tensor:
        magnitude = _magnitude(x, mode)
        ctx.save_for_backward(x, eps, magnitude)
        ctx.std, ctx.mode = std, mode
        return torch.addcmul(x, magnitude, eps, value=std)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        x, eps, magnitude = ctx.saved_tensors
        std, mode = ctx.std, ctx.mode
        n, c, h, w = x.shape
        # sum(g * eps) per (sample, channel) as N*C dot products (enough rows for every thread), then
        # summed over the pooled dimensions.
        dot = torch.bmm(grad.reshape(n * c, 1, h * w), eps.reshape(n * c, h * w, 1)).view(n, c, 1, 1)
        if mode == "sample":
            dot = dot.sum(dim=1, keepdim=True)
            coefficient = torch.where(magnitude > 0, dot * std / (magnitude * (c * h * w)), 0.0)
            return torch.addcmul(grad, x, coefficient), None, None, None
        per_element = std / (h * w) if mode == "channel" else std / x.numel()
        if mode == "tensor":
            dot = dot.sum()
        out = torch.sign(x)
        return torch.addcmul(grad, out, dot * per_element, out=out), None, None, None


@torch.jit.unused
def _pooled_noise_fused(x: Tensor, eps: Tensor, std: float, mode: str) -> Tensor:
    """:class:`_PooledNoise` (not scriptable: TorchScript runs :func:`_pooled_noise`, the same forward)."""
    return _PooledNoise.apply(x, eps, std, mode)


def noise_to_signal(x: Tensor, perturbation: Tensor) -> float:
    """``||perturbation||_2 / ||x||_2`` over the whole tensor (0 for an all-zero ``x``): the one measure
    of F-Noise's strength used in logs, TensorBoard (``f_noise_nsr/level_<name>``) and pictures."""
    norm = torch.linalg.vector_norm(x.float())
    return float(torch.linalg.vector_norm(perturbation.float()) / norm.clamp_min(1e-12))


def _check_choice(setting: str, value: object, allowed: Sequence[str]) -> None:
    """The one-line error for an F-Noise setting outside its choices (mode, distribution, schedule)."""
    if value not in allowed:
        raise ValueError(f"f_noise {setting} must be one of {', '.join(allowed)}; got {value!r}")


def _check_std(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"f_noise std must be a finite number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class FNoiseSchedule:
    """F-Noise's sigma over training, as a multiplier of the configured sigma (:attr:`FNoise.scale`).

    A pure function of the global iteration, so a resumed run continues it exactly. From 1 at iteration 0
    to ``end_factor`` at the last iteration (``total_iters - 1``):

    - ``"constant"``: 1 throughout;
    - ``"linear"``: a straight line;
    - ``"cosine"``: a half cosine (flat at both ends);
    - ``"step"``: jumps at the start of each epoch in ``step_epochs``, in equal steps, reaching
      ``end_factor`` at the last of them.

    With ``warmup_iters`` the multiplier is also ramped up linearly from 0 over the first iterations.
    """

    kind: str = "constant"
    end_factor: float = 1.0
    total_iters: int = 1
    iters_per_epoch: int = 1
    step_epochs: tuple[int, ...] = ()
    warmup_iters: int = 0

    def __post_init__(self) -> None:
        _check_choice("schedule", self.kind, F_NOISE_SCHEDULES)
        if self.kind == "step" and not self.step_epochs:
            raise ValueError("the step f_noise schedule needs the epochs at which sigma steps")
        if not (math.isfinite(self.end_factor) and self.end_factor >= 0):
            raise ValueError(
                f"f_noise schedule end factor must be a finite number >= 0, got {self.end_factor}"
            )

    def __call__(self, iteration: int) -> float:
        progress = min(iteration, self.total_iters - 1) / max(self.total_iters - 1, 1)
        if self.kind == "linear":
            factor = 1.0 + (self.end_factor - 1.0) * progress
        elif self.kind == "cosine":
            factor = self.end_factor + (1.0 - self.end_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.kind == "step":
            epoch = iteration // max(self.iters_per_epoch, 1)
            passed = sum(1 for step in self.step_epochs if epoch >= step)
            factor = 1.0 + (self.end_factor - 1.0) * passed / len(self.step_epochs)
        else:
            factor = 1.0
        if self.warmup_iters > 0 and iteration < self.warmup_iters:
            factor *= iteration / self.warmup_iters
        return factor


@dataclass(frozen=True)
class FNoiseConfig:
    """Everything that defines F-Noise in a run: the module's settings and its sigma schedule.

    The one F-Noise configuration of the package: the factories build it from their flat ``f_noise_*``
    arguments, the model's ``build_config`` and checkpoints store :meth:`to_dict`, ``train`` builds it
    from its flags (and presets), and the study labels arms from it. Invalid values raise ``ValueError``
    at construction, with a one-line message.

    Attributes:
        enabled: whether the model perturbs its features at all (``use_f_noise``).
        std: sigma, or a mapping level -> sigma (only the named levels are perturbed).
        mode, distribution, levels: see :class:`FNoise`.
        schedule: ``"constant"``, ``"linear"``, ``"cosine"`` or ``"step"`` (see :class:`FNoiseSchedule`).
        std_end: sigma at the last iteration (largest per-level sigma when ``std`` is a mapping); needed
            by every schedule but ``"constant"``.
        step_epochs: the epochs where the ``"step"`` schedule moves.
        warmup_iters: iterations over which sigma first ramps up from 0.
    """

    enabled: bool = False
    std: float | Mapping[str, float] = 0.1
    mode: str = "elementwise"
    distribution: str = "gaussian"
    levels: tuple[str, ...] | None = None
    schedule: str = "constant"
    std_end: float | None = None
    step_epochs: tuple[int, ...] = ()
    warmup_iters: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.std, Mapping):
            if not self.std:
                raise ValueError("f_noise std mapping must name at least one level")
            object.__setattr__(self, "std", {str(k): _check_std(v) for k, v in self.std.items()})
            if self.levels is not None:
                raise ValueError("f_noise: give either a per-level std mapping or levels, not both")
        else:
            object.__setattr__(self, "std", _check_std(self.std))
        if self.levels is not None:
            if isinstance(self.levels, str) or not self.levels:
                raise ValueError(
                    f"f_noise levels must be a non-empty list of level names, got {self.levels!r}"
                )
            object.__setattr__(self, "levels", tuple(str(level) for level in self.levels))
        _check_choice("mode", self.mode, F_NOISE_MODES)
        _check_choice("distribution", self.distribution, F_NOISE_DISTRIBUTIONS)
        self._check_schedule()

    def _check_schedule(self) -> None:
        _check_choice("schedule", self.schedule, F_NOISE_SCHEDULES)
        if self.std_end is not None:
            object.__setattr__(self, "std_end", _check_std(self.std_end))
            if self.std_end > 0 and self.base_std == 0:
                raise ValueError("f_noise std_end needs a nonzero std to scale")
        if self.schedule != "constant" and self.std_end is None:
            raise ValueError(f"the {self.schedule} f_noise schedule needs std_end (sigma at the end)")
        if self.schedule == "step" and not self.step_epochs:
            raise ValueError("the step f_noise schedule needs step_epochs (the epochs at which sigma steps)")
        object.__setattr__(self, "step_epochs", tuple(int(e) for e in self.step_epochs))
        if self.warmup_iters < 0:
            raise ValueError(f"f_noise warmup_iters must be >= 0, got {self.warmup_iters}")

    @property
    def base_std(self) -> float:
        """The largest sigma at iteration 0 (the one the schedule scales)."""
        return max(self.std.values()) if isinstance(self.std, Mapping) else float(self.std)

    @property
    def active(self) -> bool:
        """Whether a model built from this configuration perturbs anything in training."""
        return self.enabled and self.base_std > 0

    def module(self, available_levels: Sequence[str] | None = None) -> FNoise:
        """The :class:`FNoise` module (sigma 0 when not enabled, which makes it the identity)."""
        if not self.enabled:
            return FNoise(0.0, self.mode, None, distribution=self.distribution)
        return FNoise(
            self.std,
            self.mode,
            self.levels,
            distribution=self.distribution,
            available_levels=available_levels,
        )

    def sigma_schedule(self, iters_per_epoch: int, epochs: int) -> FNoiseSchedule:
        """The multiplier of sigma as a function of the global iteration, for a run of that length."""
        base = self.base_std
        end = self.std_end
        return FNoiseSchedule(
            self.schedule,
            end / base if end is not None and base > 0 else 1.0,
            total_iters=iters_per_epoch * epochs,
            iters_per_epoch=iters_per_epoch,
            step_epochs=self.step_epochs,
            warmup_iters=self.warmup_iters,
        )

    def describe(self) -> str:
        """A short human label, e.g. ``"elementwise gaussian sigma=0.1"``, ``"off"``."""
        if not self.enabled:
            return "off"
        std = self.std
        sigma = ",".join(f"{k}:{v:g}" for k, v in std.items()) if isinstance(std, Mapping) else f"{std:g}"
        text = f"{self.mode} {self.distribution} sigma={sigma}"
        if self.levels is not None:
            text += f" levels={','.join(self.levels)}"
        if self.schedule != "constant" or self.warmup_iters:
            text += f" schedule={self.schedule}->{self.std_end:g}" if self.std_end is not None else ""
            text += f" warmup={self.warmup_iters}" if self.warmup_iters else ""
        return text

    def replace(self, **changes: Any) -> "FNoiseConfig":
        """A copy with ``changes`` applied (and validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists for tuples), as stored in config.json and checkpoints."""
        values = asdict(self)
        values["std"] = dict(self.std) if isinstance(self.std, Mapping) else self.std
        values["levels"] = list(self.levels) if self.levels is not None else None
        values["step_epochs"] = list(self.step_epochs)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "FNoiseConfig":
        """The inverse of :meth:`to_dict`; missing keys take the defaults, unknown keys are refused."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown f_noise setting(s): {', '.join(unknown)}")
        for key in ("levels", "step_epochs"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


#: Named F-Noise configurations that reproduce definitions used elsewhere (``train --f-noise-preset``).
F_NOISE_PRESETS: dict[str, FNoiseConfig] = {
    # The original task's definition ("the simple implementation as described in the mail"): every backbone
    # feature multiplied by U(0.8, 1.2), i.e. relative noise of std 0.2 / sqrt(3) = 0.115.
    "deepmirror-uniform": FNoiseConfig(enabled=True, std=0.2 / _SQRT3, distribution="uniform"),
    # The seed report 001: N(mean(x), 0.1^2) noise of shape [H, W], broadcast over batch and channels, added
    # to C5 only. It scales with neither |x| nor the channel: only its mean follows mean(x).
    "seed001-additive": FNoiseConfig(enabled=True, std=0.1, mode="additive-hw", levels=("3",)),
    # Our default: elementwise Gaussian, y = x * N(1, sigma^2) (Gaussian dropout), sigma 0.1, every level.
    "gaussian-dropout": FNoiseConfig(enabled=True),
}
