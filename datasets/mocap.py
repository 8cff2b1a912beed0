"""Motion capture: a BVH reader, forward kinematics, and a ``mocap`` source of posed skeletons.

``read_bvh`` parses a BVH file into a :class:`Motion`; ``forward_kinematics`` turns its frames into
world joint positions (file units, world +y up). The ``Mocap`` source keeps a pool of root-relative
poses in metres, mapped to a common 17-joint skeleton (or every joint of the file), and each
``generate(seed, batch_index)`` views random poses from random orbit cameras: ``kp3d`` in the
camera frame and ``kp2d`` in pixels (frames of :mod:`renderloop.renderers.cameras`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from renderloop.config import ConfigError, check_number
from renderloop.renderers import cameras

from .seeding import batch_seed, config_digest

__all__ = [
    "Motion", "read_bvh", "forward_kinematics", "COMMON_JOINTS", "COMMON_PARENTS", "SKELETON_MAPS",
    "common_joint_indices", "unit_mm", "MocapConfig", "Mocap",
]  # fmt: skip

VERSION = "1"
CHANNELS = tuple(f"{axis}{kind}" for kind in ("position", "rotation") for axis in "XYZ")

COMMON_JOINTS = (
    "pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "spine", "thorax", "neck", "head",
    "left_shoulder", "left_elbow", "left_wrist", "right_shoulder", "right_elbow", "right_wrist",
)  # fmt: skip
"""The common skeleton (Human3.6M's 17-joint order)."""
COMMON_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
"""Parent of each common joint (-1: the root), for drawing bones."""

SKELETON_MAPS: dict[str, tuple[str, ...]] = {
    # CMU (cgspeed BVH): LHipJoint, Neck and LeftShoulder sit at their parents' positions, so the
    # hips, neck and shoulders are the next joints down the chain. "a|b": the first one present.
    "cmu": (
        "Hips", "RightUpLeg", "RightLeg", "RightFoot", "LeftUpLeg", "LeftLeg", "LeftFoot",
        "Spine", "Spine1", "Neck1|Neck", "Head",
        "LeftArm", "LeftForeArm", "LeftHand", "RightArm", "RightForeArm", "RightHand",
    ),
    "boxing": (
        "Hips", "RightHip", "RightKnee", "RightAnkle", "LeftHip", "LeftKnee", "LeftAnkle",
        "Ab", "Chest", "Neck", "Head",
        "LeftShoulder", "LeftElbow", "LeftWrist", "RightShoulder", "RightElbow", "RightWrist",
    ),
}  # fmt: skip
"""Joint names of each known skeleton, in ``COMMON_JOINTS`` order."""

CMU_UNIT_MM = 25.4 / 0.45  # ASF length unit: 1/0.45 inch


@dataclass(frozen=True, eq=False)
class Motion:
    """A parsed BVH file. Joints are in file order (parents first); End Sites are not joints.

    Attributes:
        names: ``[J]`` joint names.
        parents: ``[J]`` parent index of each joint, -1 for the root.
        offsets: ``[J, 3]`` float64 offset of each joint from its parent (file units).
        end_sites: ``[J]`` offset of the joint's End Site (``[3]`` array) or None.
        channels: ``[J]`` channel names of each joint, in file order.
        frames: ``[F, C]`` float64 channel values (C: all channels); angles in degrees.
        frame_time: seconds per frame.
    """

    names: tuple[str, ...]
    parents: tuple[int, ...]
    offsets: np.ndarray
    end_sites: tuple[np.ndarray | None, ...]
    channels: tuple[tuple[str, ...], ...]
    frames: np.ndarray
    frame_time: float

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]


def _error(path, line: int, msg: str) -> ValueError:
    return ValueError(f"read_bvh(): {path}, line {line}: {msg}")


def read_bvh(path: str | Path) -> Motion:
    """Parse the BVH file at ``path``.

    Raises:
        ValueError: malformed input (missing MOTION section, unknown channel, a frame line with
            the wrong number of values, fewer frames than the header's count, …); the message
            names the file and line. Frames beyond the header's count are dropped.
    """
    lines = Path(path).read_text().splitlines()
    motion_at = next((i for i, line in enumerate(lines) if line.strip() == "MOTION"), None)
    if motion_at is None:
        raise _error(path, len(lines), "no MOTION section")
    tokens = [(tok, i + 1) for i, line in enumerate(lines[:motion_at]) for tok in line.split()]
    tokens.append(("MOTION", motion_at + 1))
    pos = 0

    def take(what: str) -> tuple[str, int]:
        nonlocal pos
        tok, line = tokens[pos]
        if tok == "MOTION":
            raise _error(path, line, f"expected {what}; got the MOTION section")
        pos += 1
        return tok, line

    def number(what: str) -> float:
        tok, line = take(what)
        try:
            return float(tok)
        except ValueError:
            raise _error(path, line, f"expected {what}; got {tok!r}") from None

    names: list[str] = []
    parents: list[int] = []
    offsets: dict[int, np.ndarray] = {}
    channels: dict[int, tuple[str, ...]] = {}
    end_sites: dict[int, np.ndarray] = {}
    tok, line = take("HIERARCHY")
    if tok != "HIERARCHY":
        raise _error(path, line, f"expected HIERARCHY; got {tok!r}")
    stack: list[int | None] = []  # open blocks: joint index, or None for an End Site
    while True:
        tok, line = tokens[pos]
        if tok == "MOTION" and not stack and names:
            break
        take("a joint, End Site, OFFSET, CHANNELS or '}'")
        if tok in ("ROOT", "JOINT"):
            valid = not stack and not names if tok == "ROOT" else bool(stack) and stack[-1] is not None
            if not valid:
                raise _error(path, line, f"unexpected {tok} (one ROOT, then JOINTs inside joints)")
            names.append(take("a joint name")[0])
            parents.append(stack[-1] if stack else -1)
            stack.append(len(names) - 1)
        elif tok == "End":
            if take("Site")[0] != "Site" or not stack or stack[-1] is None:
                raise _error(path, line, "End Site must follow 'End' inside a joint")
            stack.append(None)
        elif tok == "OFFSET":
            if not stack:
                raise _error(path, line, "OFFSET outside a joint")
            offset = np.array([number("an OFFSET value") for _ in range(3)])
            if stack[-1] is None:
                end_sites[stack[-2]] = offset
            else:
                offsets[stack[-1]] = offset
        elif tok == "CHANNELS":
            if not stack or stack[-1] is None:
                raise _error(path, line, "CHANNELS outside a joint")
            count = number("a channel count")
            names_here = tuple(take("a channel name")[0] for _ in range(int(count)))
            for name in names_here:
                if name not in CHANNELS:
                    raise _error(path, line, f"unknown channel {name!r}; expected one of {CHANNELS}")
            channels[stack[-1]] = names_here
        elif tok == "}":
            if not stack:
                raise _error(path, line, "unmatched '}'")
            closed = stack.pop()
            if closed is not None and closed not in offsets:
                raise _error(path, line, f"joint {names[closed]!r} has no OFFSET")
        elif tok != "{":
            raise _error(path, line, f"unexpected {tok!r}")

    header = " ".join(lines[motion_at + 1 : motion_at + 3]).strip()
    match = re.fullmatch(r"Frames:\s*(\d+)\s+Frame Time:\s*(\d*\.?\d+(?:[eE][+-]?\d+)?)", header)
    if match is None:
        raise _error(path, motion_at + 2, "expected 'Frames: <count>' and 'Frame Time: <seconds>' lines")
    count, frame_time = int(match[1]), float(match[2])
    width = sum(len(c) for c in channels.values())
    rows = []
    for i in range(motion_at + 3, len(lines)):
        values = lines[i].split()
        if not values:
            continue
        if len(values) != width:
            raise _error(path, i + 1, f"expected {width} values in a frame; got {len(values)}")
        try:
            rows.append([float(v) for v in values])
        except ValueError:
            raise _error(path, i + 1, "frame values must be numbers") from None
    if len(rows) < count:
        raise _error(path, len(lines), f"header says {count} frames; got {len(rows)}")
    rows = rows[:count]  # some exporters write one frame more than they count; readers keep the count
    return Motion(
        names=tuple(names),
        parents=tuple(parents),
        offsets=np.stack([offsets[j] for j in range(len(names))]),
        end_sites=tuple(end_sites.get(j) for j in range(len(names))),
        channels=tuple(channels.get(j, ()) for j in range(len(names))),
        frames=np.array(rows, dtype=np.float64).reshape(count, width),
        frame_time=frame_time,
    )


def _axis_rotation(axis: int, degrees: np.ndarray) -> np.ndarray:
    """``[F, 3, 3]`` right-handed rotations by ``degrees [F]`` about axis 0 (x), 1 (y) or 2 (z)."""
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    R = np.zeros((len(a), 3, 3))
    i, j = [k for k in range(3) if k != axis]  # the rotated plane, in right-handed order
    if axis == 1:
        i, j = j, i  # about y: z → x
    R[:, axis, axis] = 1
    R[:, i, i], R[:, i, j], R[:, j, i], R[:, j, j] = c, -s, s, c
    return R


def forward_kinematics(motion: Motion, frames: slice | np.ndarray | None = None) -> np.ndarray:
    """World positions ``[F, J, 3]`` (file units) of every joint in the selected ``frames``.

    A joint's local transform applies its channels in file order: the rotation is the product of
    the elementary rotations in channel order (``R = R_c1 @ R_c2 @ R_c3``) and position channels
    add to the offset. ``frames`` indexes ``motion.frames`` (default: all).
    """
    data = motion.frames if frames is None else motion.frames[frames]
    data = data.reshape(-1, motion.frames.shape[1])  # (F, C)
    F, J = data.shape[0], len(motion.names)
    pos, rot = np.empty((F, J, 3)), np.empty((F, J, 3, 3))
    col = 0
    for j, (parent, names) in enumerate(zip(motion.parents, motion.channels, strict=True)):
        local_t = np.repeat(motion.offsets[j][None], F, axis=0)
        local_r = np.broadcast_to(np.eye(3), (F, 3, 3))
        for name in names:
            axis = "XYZ".index(name[0])
            if name.endswith("position"):
                local_t[:, axis] += data[:, col]
            else:
                local_r = local_r @ _axis_rotation(axis, data[:, col])
            col += 1
        if parent < 0:
            pos[:, j], rot[:, j] = local_t, local_r
        else:
            pos[:, j] = pos[:, parent] + (rot[:, parent] @ local_t[..., None])[..., 0]
            rot[:, j] = rot[:, parent] @ local_r
    return pos


def common_joint_indices(names: tuple[str, ...] | list[str]) -> list[int]:
    """Indices into ``names`` of the ``COMMON_JOINTS``, from the first matching ``SKELETON_MAPS`` entry.

    Raises:
        ValueError: no known skeleton maps onto ``names``.
    """
    where = {name: i for i, name in enumerate(names)}
    missing: dict[str, list[str]] = {}
    for skeleton, entries in SKELETON_MAPS.items():
        found = [next((where[n] for n in entry.split("|") if n in where), None) for entry in entries]
        if None not in found:
            return found
        missing[skeleton] = [e for e, i in zip(entries, found, strict=True) if i is None]
    best = min(missing, key=lambda k: len(missing[k]))
    raise ValueError(
        f"common_joint_indices(): cannot map a skeleton with joints {list(names)} to COMMON_JOINTS; "
        f"closest known skeleton {best!r} lacks {missing[best]}"
    )


def unit_mm(motion: Motion) -> float:
    """Millimetres per file unit, told from the joint names: CMU (ASF units) or Boxing (cm).

    Raises:
        ValueError: the skeleton is neither (pass the units explicitly).
    """
    names = set(motion.names)
    if {"LHipJoint", "RHipJoint", "LowerBack", "Spine1"} <= names:
        return CMU_UNIT_MM
    if {"Ab", "Chest", "LeftCollar", "LeftHip"} <= names:
        return 10.0
    raise ValueError(f"unit_mm(): unknown skeleton {list(motion.names)[:6]}…; give its units explicitly")


@dataclass
class MocapConfig:
    """Settings of the motion capture source (Hydra group ``source``, option ``mocap``)."""

    files: list[str] = field(default_factory=list)
    """BVH files whose frames make the pose pool."""
    frame_range: tuple[float, float] = (0.0, 1.0)
    """Fraction of each file's frames used, e.g. (0, 0.8) to train and (0.8, 1) to test."""
    stride: int = 4
    """Keep every ``stride``-th frame (mocap at 100+ fps is very redundant)."""
    joints: str = "common17"
    """``common17`` (COMMON_JOINTS) or ``all`` (every joint of the file; one skeleton for all files)."""
    units_mm: list[float] | None = None
    """Millimetres per file unit, one per file; default: told from the skeleton (``unit_mm``)."""
    batch_size: int = 64
    resolution: int = 256
    """Square image size in pixels; the principal point is its centre."""
    focal: float = 300.0
    """Focal length in pixels."""
    distance: tuple[float, float] = (4.0, 6.0)
    """Camera to pelvis, metres."""
    azimuth_deg: tuple[float, float] = (0.0, 360.0)
    elevation_deg: tuple[float, float] = (-10.0, 30.0)
    noise_px: float = 0.0
    """Std of Gaussian noise added to ``kp2d``, pixels."""

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"source.{key}", msg)

        if not self.files:
            raise bad("files", f"must list at least one BVH file; got {self.files}")
        check_number("source.frame_range", self.frame_range, at_least=0, at_most=1, strict=True)
        if self.stride < 1:
            raise bad("stride", f"must be >= 1; got {self.stride}")
        if self.joints not in ("common17", "all"):
            raise bad("joints", f"must be 'common17' or 'all'; got {self.joints!r}")
        if self.units_mm is not None and (
            len(self.units_mm) != len(self.files) or not all(0 < u < math.inf for u in self.units_mm)
        ):
            raise bad("units_mm", f"must give one positive value per file ({len(self.files)}); got {self.units_mm}")
        if self.batch_size < 1:
            raise bad("batch_size", f"must be >= 1; got {self.batch_size}")
        if self.resolution < 8:
            raise bad("resolution", f"must be >= 8; got {self.resolution}")
        check_number("source.focal", self.focal, above=0, note="pixels")
        check_number("source.distance", self.distance, above=0, note="metres")
        check_number("source.azimuth_deg", self.azimuth_deg)
        check_number("source.elevation_deg", self.elevation_deg, above=-90, below=90, note="no camera on the up axis")
        check_number("source.noise_px", self.noise_px, at_least=0)

    def digest(self) -> str:
        return config_digest(self)


class Mocap:
    """Mocap poses seen by random cameras; build once, then call :meth:`generate` per batch.

    Attributes:
        names, parents: the joints of the pool (``COMMON_JOINTS`` or the file's) and their tree.
        poses: ``[N, J, 3]`` float32 pool on ``device``: world frame (+y up), metres, pelvis (root) at 0.
        file_of, frame_of: ``[N]`` int64 (CPU) file index and frame number of each pose.
    """

    name = "mocap"

    def __init__(self, config: MocapConfig, device: torch.device | str = "cpu") -> None:
        self.config = cfg = config
        self.device = torch.device(device)
        poses, file_of, frame_of = [], [], []
        first: Motion | None = None
        for k, path in enumerate(cfg.files):
            if not Path(path).is_file():
                raise ConfigError("source.files", f"no such file: {path}")
            motion = read_bvh(path)
            first = first or motion
            n = motion.num_frames
            picked = np.arange(round(cfg.frame_range[0] * n), round(cfg.frame_range[1] * n), cfg.stride)
            if not len(picked):
                raise ConfigError("source.frame_range", f"selects no frame of {path} ({n} frames)")
            if cfg.joints == "all":
                if motion.names != first.names:
                    raise ConfigError("source.joints", f"'all' needs one skeleton; {path} differs from {cfg.files[0]}")
                index = list(range(len(motion.names)))
            else:
                try:
                    index = common_joint_indices(motion.names)
                except ValueError as err:
                    raise ConfigError("source.joints", f"{path}: {err}") from None
            try:
                mm = cfg.units_mm[k] if cfg.units_mm else unit_mm(motion)
            except ValueError as err:
                raise ConfigError("source.units_mm", f"{path}: {err}") from None
            xyz = forward_kinematics(motion, picked)[:, index] * (mm / 1000)  # (F, J, 3) metres
            poses.append(xyz - xyz[:, :1])  # joint 0 is the pelvis (common17) or the root (all)
            file_of.append(np.full(len(picked), k))
            frame_of.append(picked)
        if cfg.joints == "all":
            self.names, self.parents = first.names, first.parents
        else:
            self.names, self.parents = COMMON_JOINTS, COMMON_PARENTS
        self.poses = torch.as_tensor(np.concatenate(poses), dtype=torch.float32, device=self.device)
        self.file_of = torch.as_tensor(np.concatenate(file_of))
        self.frame_of = torch.as_tensor(np.concatenate(frame_of))

    def warmup(self) -> None:
        """Generate and drop one batch."""
        self.generate(0, 0)

    @property
    def meta(self) -> dict[str, Any]:
        return {"source": self.name, "version": VERSION, "joints": self.config.joints, "config": self.config.digest()}

    def _range(self, gen, n, bounds, scale=1.0):
        lo, hi = bounds
        return (lo + (hi - lo) * torch.rand(n, generator=gen, device=self.device)) * scale

    @torch.no_grad()
    def generate(self, seed: int, batch_index: int) -> dict[str, torch.Tensor]:
        """One batch; a pure function of ``(seed, batch_index)`` on a given device.

        Returns ``kp2d [B, J, 2]`` pixels, ``kp3d [B, J, 3]`` camera frame (metres), ``pose [B, J, 3]``
        (world, root-relative), ``index [B]`` into the pool, and the camera: ``K``, ``R``, ``t``,
        ``azimuth``, ``elevation`` (radians) and ``distance`` (metres), each ``[B, ...]``.
        """
        cfg, dev = self.config, self.device
        gen = torch.Generator(device=dev).manual_seed(batch_seed(seed, batch_index))
        B = cfg.batch_size
        index = torch.randint(self.poses.shape[0], (B,), generator=gen, device=dev)
        az = self._range(gen, B, cfg.azimuth_deg, math.pi / 180)
        el = self._range(gen, B, cfg.elevation_deg, math.pi / 180)
        dist = self._range(gen, B, cfg.distance)
        R, t = cameras.orbit_camera(az, el, dist)  # looks at the pelvis, at the world origin
        f, c = torch.full((B,), cfg.focal, device=dev), torch.full((B,), cfg.resolution / 2, device=dev)
        K = cameras.intrinsics(f, f, c, c)
        pose = self.poses[index]
        kp3d = cameras.world_to_camera(pose, R, t)
        kp2d = cameras.camera_to_pixel(kp3d, K)
        if cfg.noise_px > 0:
            kp2d = kp2d + cfg.noise_px * torch.randn(kp2d.shape, generator=gen, device=dev)
        return {
            "kp2d": kp2d, "kp3d": kp3d, "pose": pose, "index": index,
            "K": K, "R": R, "t": t, "azimuth": az, "elevation": el, "distance": dist,
        }  # fmt: skip

    def to_samples(self, batch: dict[str, torch.Tensor], seeds: list[int], keys: list[str]) -> list[dict[str, Any]]:
        """Schema samples (CPU, ready for ``encode_sample``) from a batch, with their keys and seeds."""
        cpu = {k: v.detach().cpu() for k, v in batch.items()}
        meta = self.meta
        samples = []
        for i, (key, seed) in enumerate(zip(keys, seeds, strict=True)):
            pool = int(cpu["index"][i])
            where = {"file": self.config.files[int(self.file_of[pool])], "frame": int(self.frame_of[pool])}
            cam = {k: cpu[k][i] for k in ("K", "R", "t", "azimuth", "elevation", "distance")}
            kp = {"kp2d.npy": cpu["kp2d"][i].numpy(), "kp3d.npy": cpu["kp3d"][i].numpy()}
            samples.append({"__key__": key, **kp, "cam.json": cam, "meta.json": {**meta, "seed": int(seed), **where}})
        return samples
