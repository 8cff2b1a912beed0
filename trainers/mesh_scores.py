"""Shape scores against true meshes: scale-normalized Chamfer distance and F-score.

Both meshes are sampled uniformly on their surfaces (area-weighted), centred on their
bounding-box centres and scaled to a unit bounding-box diagonal, since a single image fixes
neither the size nor the distance of an object. The object frames are shared (the category's
canonical frame), so no rotation is fitted. Chamfer: the mean distance from each point to the
other set's nearest, both ways, averaged. F-score at ``tau``: the harmonic mean of the shares of
predicted points near the truth (precision) and of true points near the prediction (recall).
"""

from __future__ import annotations

import torch

__all__ = ["sample_surface", "normalized", "chamfer_fscore", "distances"]


def sample_surface(verts: torch.Tensor, faces: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` points ``[B, count, 3]`` uniform on the surfaces of ``verts [B, V, 3]`` / ``faces [F, 3]``."""
    corners = verts[:, faces]  # (B, F, 3, 3)
    area = torch.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0], dim=-1).norm(dim=-1)
    face = torch.multinomial(area.float().cpu().clamp_min(1e-12), count, replacement=True, generator=generator)
    face = face.to(verts.device)
    r1, r2 = torch.rand(2, *face.shape, 1, generator=generator).to(verts.device).unbind(0)
    u = 1 - r1.sqrt()  # uniform barycentrics
    v = r1.sqrt() * (1 - r2)
    w = r1.sqrt() * r2
    tri = torch.gather(corners, 1, face[..., None, None].expand(-1, -1, 3, 3))
    return u * tri[:, :, 0] + v * tri[:, :, 1] + w * tri[:, :, 2]


def normalized(points: torch.Tensor) -> torch.Tensor:
    """``[B, N, 3]`` centred on each set's bounding-box centre, bounding-box diagonal 1."""
    lo, hi = points.amin(1, keepdim=True), points.amax(1, keepdim=True)
    return (points - (lo + hi) / 2) / (hi - lo).norm(dim=-1, keepdim=True).clamp_min(1e-12)


def chamfer_fscore(
    pred: torch.Tensor, true: torch.Tensor, tau: float = 0.02, chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair of point sets ``[B, N, 3]``, ``[B, M, 3]``: (Chamfer distance, F-score at ``tau``).
    Distances are exact (0 for the same point) and taken ``chunk`` predicted points at a time, so
    10,000-point sets, which the scores need to sit well above their sampling floor, fit in memory."""
    to_true = torch.empty(pred.shape[:2], dtype=pred.dtype, device=pred.device)
    to_pred = torch.full(true.shape[:2], torch.inf, dtype=pred.dtype, device=pred.device)
    on_cpu = pred.device.type == "cpu"
    for start in range(0, pred.shape[1], chunk):
        d = distances(pred[:, start : start + chunk], true, cdist=on_cpu)
        to_true[:, start : start + chunk] = d.amin(2)
        to_pred = torch.minimum(to_pred, d.amin(1))
    chamfer = (to_true.mean(1) + to_pred.mean(1)) / 2
    precision, recall = (to_true < tau).float().mean(1), (to_pred < tau).float().mean(1)
    return chamfer, 2 * precision * recall / (precision + recall).clamp_min(1e-12)


def distances(a: torch.Tensor, b: torch.Tensor, cdist: bool) -> torch.Tensor:
    """Exact distances ``[B, N, M]`` between ``a [B, N, 3]`` and ``b [B, M, 3]``: by ``torch.cdist``'s
    direct kernel, or from the difference vectors themselves. The CPU takes the first; CUDA the
    second, as its direct cdist kernel reduces every distance with a thread block of its own, three
    of whose threads have work for 3-D points."""
    if cdist:
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
    return (a.unsqueeze(2) - b.unsqueeze(1)).norm(dim=-1)
