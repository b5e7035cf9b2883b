"""Backbones with F-Noise between the body and the FPN."""

from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from .fnoise import FNoise, FNoiseConfig

__all__ = ["FNoiseBackboneWithFPN"]


class FNoiseBackboneWithFPN(BackboneWithFPN):
    """torchvision's ``BackboneWithFPN`` with an :class:`FNoise` module between ``body`` and ``fpn``.

    ``body``, ``fpn`` and ``out_channels`` are those of the parent class, so every torchvision code
    path that uses a backbone works unchanged; ``f_noise`` adds neither parameters nor buffers, so the
    ``state_dict`` keys are those of ``BackboneWithFPN``. With ``f_noise`` in eval mode (or
    ``std == 0``) the forward pass is exactly the parent's.

    Args:
        backbone, return_layers, in_channels_list, out_channels, extra_blocks, norm_layer: as for
            ``torchvision.models.detection.backbone_utils.BackboneWithFPN``.
        f_noise_std, f_noise_mode, f_noise_levels, f_noise_distribution: see :class:`FNoise`.
        ``f_noise_levels`` are names
            among ``return_layers.values()``.

    Shape:
        - Input: ``Tensor[N, 3, H, W]``.
        - Output: ordered ``Dict[str, Tensor[N, out_channels, H_i, W_i]]`` of FPN levels.
    """

    def __init__(
        self,
        backbone: nn.Module,
        return_layers: dict[str, str],
        in_channels_list: list[int],
        out_channels: int,
        extra_blocks: ExtraFPNBlock | None = None,
        norm_layer: Callable[..., nn.Module] | None = None,
        *,
        f_noise_std: float = 0.0,
        f_noise_mode: str = "elementwise",
        f_noise_levels: Sequence[str] | None = None,
        f_noise_distribution: str = "gaussian",
    ) -> None:
        super().__init__(backbone, return_layers, in_channels_list, out_channels, extra_blocks, norm_layer)
        self.f_noise = FNoise(
            f_noise_std,
            f_noise_mode,
            f_noise_levels,
            distribution=f_noise_distribution,
            available_levels=list(return_layers.values()),
        )

    @classmethod
    def from_backbone_with_fpn(
        cls, backbone: BackboneWithFPN, f_noise: FNoiseConfig | None = None
    ) -> "FNoiseBackboneWithFPN":
        """Adds F-Noise (``f_noise``; none by default) to an existing ``BackboneWithFPN``, sharing its
        ``body`` and ``fpn`` modules.

        This is how the factories build their backbones: torchvision's own extractors make the
        ``BackboneWithFPN`` (same layers, freezing and initialisation as torchvision's models), and
        this wraps it without creating or re-initialising any parameter.
        """
        wrapped = cls.__new__(cls)
        nn.Module.__init__(wrapped)
        wrapped.body = backbone.body
        wrapped.fpn = backbone.fpn
        wrapped.out_channels = backbone.out_channels
        wrapped.f_noise = (f_noise or FNoiseConfig()).module(list(backbone.body.return_layers.values()))
        return wrapped

    def without_f_noise(self) -> BackboneWithFPN:
        """A plain torchvision ``BackboneWithFPN`` sharing this backbone's ``body`` and ``fpn`` (for
        export)."""
        plain = BackboneWithFPN.__new__(BackboneWithFPN)
        nn.Module.__init__(plain)
        plain.body = self.body
        plain.fpn = self.fpn
        plain.out_channels = self.out_channels
        return plain

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.body(x)
        features = self.f_noise.perturb_features(features)
        return self.fpn(features)
