"""Small 2D/3D U-Nets with a diffusion time embedding: the building block of both teacher pathways and the student.

Plain U-Net (shared/METHOD.md, "Networks"): two conv3x3-BN-LeakyReLU blocks per level, max-pool down, bilinear
(trilinear) up with skip concatenation, dropout in the encoder, and a sinusoidal time embedding added once as a
per-channel bias after the first block. Width (``base_channels``) and ``depth`` (number of poolings) are settings;
base 16 and depth 3 is about 0.5M parameters in 2D.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .diffusion import timestep_embedding

ENCODER_DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.4)


def _layers(spatial_dims: int):
    if spatial_dims == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d
    if spatial_dims == 3:
        return nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


class ConvBlock(nn.Sequential):
    """Two conv3x3-BN-LeakyReLU layers, with optional dropout between them."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dropout: float = 0.0):
        conv, norm, _ = _layers(spatial_dims)
        layers: list[nn.Module] = [
            conv(in_channels, out_channels, 3, padding=1, bias=False),
            norm(out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [
            conv(out_channels, out_channels, 3, padding=1, bias=False),
            norm(out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        ]
        super().__init__(*layers)


class TimeUNet(nn.Module):
    """U-Net mapping (B, in_channels, *spatial) and timesteps (B,) to (B, out_channels, *spatial).

    Spatial sizes must be multiples of ``2 ** depth`` (the tiled predictor pads to that).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        base_channels: int = 16,
        depth: int = 3,
        time_dim: int = 64,
        dropout: bool = True,
    ):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.depth = depth
        self.time_dim = time_dim
        conv, _, pool = _layers(spatial_dims)
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList()
        channels = in_channels
        for level, width in enumerate(widths):
            rate = ENCODER_DROPOUT[min(level, len(ENCODER_DROPOUT) - 1)] if dropout else 0.0
            self.encoder.append(ConvBlock(spatial_dims, channels, width, rate))
            channels = width
        self.pool = pool(2)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, base_channels * 4), nn.GELU(), nn.Linear(base_channels * 4, widths[0])
        )
        self.decoder = nn.ModuleList()
        for level in reversed(range(depth)):
            self.decoder.append(ConvBlock(spatial_dims, widths[level + 1] + widths[level], widths[level]))
        self.head = conv(widths[0], out_channels, 1)
        self._upsample_mode = "bilinear" if spatial_dims == 2 else "trilinear"

    @property
    def size_multiple(self) -> int:
        return 1 << self.depth  # an int in TorchScript too (2**n is a float there)

    @torch.jit.unused  # a scripted export calls forward_with_bias with its constant t = 0 bias
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        bias = self.time_mlp(timestep_embedding(t, self.time_dim).to(x.dtype))
        return self.forward_with_bias(x, bias.view(bias.shape + (1,) * self.spatial_dims))

    def forward_with_bias(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The U-Net with the time embedding's per-channel ``bias`` (B or 1, C, 1, ...) added after the first block
        (TorchScript-compatible: the bioimage.io export scripts it)."""
        skips: list[torch.Tensor] = []
        h = x
        for level, block in enumerate(self.encoder):
            if level > 0:
                skips.append(h)
                h = self.pool(h)
            h = block(h)
            if level == 0:
                h = h + bias.to(h.dtype)
        for index, block in enumerate(self.decoder):
            skip = skips[len(skips) - 1 - index]
            h = F.interpolate(h, size=skip.shape[2:], mode=self._upsample_mode, align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        return self.head(h)


def fold_batch_norm(unet: TimeUNet) -> TimeUNet:
    """Fold every eval-mode BatchNorm into the convolution before it (in place; for inference only): the same
    function with one memory pass fewer per convolution. The network must not be trained afterwards."""
    for block in [*unet.encoder, *unet.decoder]:
        layers = list(block)
        for index, layer in enumerate(layers[:-1]):
            norm = layers[index + 1]
            if isinstance(layer, (nn.Conv2d, nn.Conv3d)) and isinstance(norm, (nn.BatchNorm2d, nn.BatchNorm3d)):
                block[index] = fuse_conv_bn_eval(layer.eval(), norm.eval())
                block[index + 1] = nn.Identity()
    return unet


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
