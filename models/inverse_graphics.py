"""GANverse3D's inverse-graphics network: one image → a deformed template mesh and its texture.

``InverseGraphicsNet`` encodes the image and predicts an offset for every vertex of a template
(an icosphere in the object frame: up +y, front +z; ``renderers/meshes.py``) and a spherical
texture map, which ``renderers/textured.py`` draws.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .decomposition import Encoder

__all__ = ["InverseGraphicsNet"]


class InverseGraphicsNet(nn.Module):
    """``[B, 3, S, S]`` in [0, 1] → vertices ``[B, V, 3]`` and texture ``[B, 3, T, T]`` in [0, 1].

    Args:
        template, faces: the mesh ``[V, 3]``, ``[F, 3]`` that the offsets deform.
        max_offset: bound of each offset coordinate (object units).
        texture_size: side of the square texture map (a power of two ≥ 8).
    """

    def __init__(self, resolution: int, template: torch.Tensor, faces: torch.Tensor, max_offset: float = 0.5,
                 texture_size: int = 64, width: int = 32, zdim: int = 256) -> None:  # fmt: skip
        super().__init__()
        self.register_buffer("template", template.float().clone(), persistent=False)
        self.register_buffer("faces", faces.long().clone(), persistent=False)
        self.max_offset = max_offset
        self.encode = Encoder(resolution, zdim, width, zdim)
        self.offsets = nn.Linear(zdim, 3 * len(template))
        nn.init.zeros_(self.offsets.weight)  # the template at the start
        nn.init.zeros_(self.offsets.bias)
        levels = int(math.log2(texture_size)) - 2
        if texture_size < 8 or 4 * 2**levels != texture_size:
            raise ValueError(f"texture_size must be a power of two >= 8; got {texture_size}")
        layers: list[nn.Module] = [nn.ConvTranspose2d(zdim, width * 2, 4), nn.ReLU()]
        for _ in range(levels):
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(width * 2, width * 2, 3, padding=1), nn.ReLU()]
        self.texture_net = nn.Sequential(*layers, nn.Conv2d(width * 2, 3, 3, padding=1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encode(image)
        offsets = torch.tanh(self.offsets(code)).view(len(image), -1, 3) * self.max_offset
        tex = torch.sigmoid(self.texture_net(code[:, :, None, None]))
        return self.template + offsets, tex
