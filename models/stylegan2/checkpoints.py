"""Published StyleGAN2 checkpoints → our networks, without running anything the file contains.

NVlabs ``.pkl`` files (stylegan2-ada-pytorch, stylegan3) pickle each network with its module's source
code, which a plain ``pickle.load`` would execute. We unpickle them allowing only the few globals such
a file needs, keep each network as a ``PersistentRecord`` (class name, attribute dict), and map its
constructor arguments and tensors onto our networks. rosinality ``.pt`` files load with
``torch.load(weights_only=True)`` and are renamed to our parameter names. Tensors land on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from .networks import Discriminator, Generator, GeneratorConfig

__all__ = ["CheckpointError", "PersistentRecord", "read_nvlabs_pickle", "load_nvlabs_pickle", "load_rosinality"]


class CheckpointError(ValueError):
    """A file that is not a StyleGAN2 checkpoint we trust, or whose weights do not fit our networks."""


@dataclass
class PersistentRecord:
    """One network object of an NVlabs pickle, never instantiated: ``class_name`` (``"Generator"``,
    ``"SynthesisLayer"``, ...) and ``state``, the object's ``__dict__`` (``_modules`` holds records)."""

    class_name: str
    state: dict
    version: int | None = None


def _persistent_record(meta: Any) -> PersistentRecord:
    if not (isinstance(meta, dict) and meta.get("type") == "class" and isinstance(meta.get("class_name"), str)):
        raise CheckpointError("read_nvlabs_pickle(): a persistent object must be a class record")
    if not isinstance(meta.get("state"), dict):
        raise CheckpointError(f"read_nvlabs_pickle(): {meta['class_name']} has no attribute dict")
    return PersistentRecord(meta["class_name"], meta["state"], meta.get("version"))  # module_src is dropped


def _reason(err: Exception) -> str:
    """The telling line of an error (torch's weights-only refusals start with boilerplate)."""
    lines = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    return next((line for line in lines if re.search("GLOBAL|WeightsUnpickler|Unsupported", line)), lines[0])


def _load_storage(data: Any):
    if not isinstance(data, bytes):
        raise CheckpointError(f"read_nvlabs_pickle(): a storage must be bytes; got {type(data).__name__}")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as err:  # torch refused a global, or the bytes are no storage
        raise CheckpointError(f"read_nvlabs_pickle(): refused a storage ({_reason(err)})") from None


def _rebuild_tensor(storage, offset, size, stride, requires_grad, hooks, metadata=None) -> torch.Tensor:
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage) or hooks:
        raise CheckpointError("read_nvlabs_pickle(): a tensor must be plain data (a storage, no hooks)")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict(), metadata)


def _rebuild_parameter(data, requires_grad, hooks, state=None) -> nn.Parameter:
    if not isinstance(data, torch.Tensor) or hooks:
        raise CheckpointError("read_nvlabs_pickle(): a parameter must be plain data (a tensor, no hooks)")
    return nn.Parameter(data, requires_grad=bool(requires_grad))  # extra attributes (state) are dropped


_NP_RECONSTRUCT, _NP_SCALAR = np.ndarray((0,)).__reduce__()[0], np.float32(0).__reduce__()[0]
# The only globals an NVlabs StyleGAN2 pickle refers to (torch dtypes are allowed besides).
_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("dnnlib.util", "EasyDict"): dict,  # a dict with attribute access; a plain dict here
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    **{(m, "_reconstruct"): _NP_RECONSTRUCT for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _NP_SCALAR for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


_UNTRUSTED = "the file is not a StyleGAN2 checkpoint this loader trusts"


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):
            return vars(torch)[name]
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        raise CheckpointError(f"read_nvlabs_pickle(): refused the global {module}.{name}; {_UNTRUSTED}")

    def persistent_load(self, pid):
        raise CheckpointError(f"read_nvlabs_pickle(): refused the persistent id {pid!r}; {_UNTRUSTED}")


def read_nvlabs_pickle(path_or_file: str | Path | IO[bytes]) -> dict:
    """The top-level dict of an NVlabs ``.pkl`` (``G``, ``D``, ``G_ema``, ``augment_pipe``,
    ``training_set_kwargs``, ...), each network a ``PersistentRecord``; tensors are on the CPU.

    Raises:
        CheckpointError: the file needs a global outside the allow-list, or is no such pickle.
    """
    is_path = isinstance(path_or_file, str | Path)
    try:
        with open(path_or_file, "rb") if is_path else contextlib.nullcontext(path_or_file) as f:
            data = _RestrictedUnpickler(f).load()
    except (CheckpointError, OSError):
        raise
    except Exception as err:  # a broken or foreign pickle: refuse it, whatever the failure
        raise CheckpointError(f"read_nvlabs_pickle(): not a readable NVlabs pickle ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"read_nvlabs_pickle(): the pickle must hold a dict; got {type(data).__name__}")
    return data


def _flat_state(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """``{dotted name: tensor}`` over ``_parameters``, persistent ``_buffers`` and child ``_modules``."""
    state, out = record.state, {}
    skip = state.get("_non_persistent_buffers_set") or set()
    tensors = [*(state.get("_parameters") or {}).items()]
    tensors += [(k, v) for k, v in (state.get("_buffers") or {}).items() if k not in skip]
    for name, value in tensors:
        if not isinstance(value, torch.Tensor | None):
            raise CheckpointError(f"load_nvlabs_pickle(): {prefix}{name} must be a tensor")
        out |= {prefix + name: value.detach()} if value is not None else {}
    for name, child in (state.get("_modules") or {}).items():
        if not isinstance(child, PersistentRecord | None):
            raise CheckpointError(f"load_nvlabs_pickle(): {prefix}{name} must be a network module")
        out |= _flat_state(child, f"{prefix}{name}.") if child is not None else {}
    return out


# Constructor settings that change only speed, precision or training, never what the weights compute.
_IGNORED = {"num_fp16_res", "fp16_channels_last", "channels_last", "fused_modconv_default", "freeze_layers"}
_COMMON_FIXED = {"activation": ("lrelu",), "resample_filter": ([1, 3, 3, 1],)}
_G_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
_D_ARGS = (
    "c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max", "num_fp16_res",
    "conv_clamp", "cmap_dim", "block_kwargs", "mapping_kwargs", "epilogue_kwargs",
)  # fmt: skip


def _init_kwargs(record: PersistentRecord, names: tuple[str, ...], where: str) -> dict:
    args, kwargs = record.state.get("_init_args") or (), record.state.get("_init_kwargs") or {}
    if not isinstance(args, tuple | list) or len(args) > len(names) or not isinstance(kwargs, dict):
        raise CheckpointError(f"load_nvlabs_pickle(): {where} must record at most {len(names)} init args and a dict")
    return {**kwargs, **dict(zip(names, args, strict=False))}


def _take(settings: dict, where: str, names: dict[str, str], fixed: dict[str, tuple] | None = None) -> dict:
    """Our keyword per recognised setting; ignored ones dropped; any other → CheckpointError."""
    fixed, out = {**_COMMON_FIXED, **(fixed or {})}, {}
    if not isinstance(settings or {}, dict):
        raise CheckpointError(f"load_nvlabs_pickle(): {where} must be a dict; got {type(settings).__name__}")
    for key, value in (settings or {}).items():
        plain = list(value) if isinstance(value, list | tuple) else value
        simple = isinstance(plain, int | float | str | list | None)  # no array comparisons
        if key in names:
            out[names[key]] = value
        elif key not in _IGNORED and not (simple and key in fixed and plain in fixed[key]):
            raise CheckpointError(f"load_nvlabs_pickle(): {where}.{key}={value!r} is not supported by our StyleGAN2")
    return out


def _require(kwargs: dict, where: str, keys=("c_dim", "img_resolution", "img_channels")) -> None:
    for key in keys:
        if key not in kwargs:
            raise CheckpointError(f"load_nvlabs_pickle(): {where}.{key} is missing")


def _build_generator(kwargs: dict, where: str) -> Generator:
    kw, keys = dict(kwargs), ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")
    _require(kw, where, keys)
    cfg = {k: kw.pop(k) for k in keys}
    mapping, synthesis = kw.pop("mapping_kwargs", None), kw.pop("synthesis_kwargs", None) or {}
    synthesis = {**synthesis, **kw}  # the stylegan3 repo passes synthesis settings at the top level
    features = {"embed_features": (None, cfg["w_dim"]), "layer_features": (None, cfg["w_dim"])}
    m_names = {"num_layers": "mapping_layers", "lr_multiplier": "mapping_lr_multiplier", "w_avg_beta": "w_avg_beta"}
    cfg.update(_take(mapping, f"{where}.mapping_kwargs", m_names, features))
    s_names = {k: k for k in ("channel_base", "channel_max", "conv_clamp", "architecture", "use_noise")}
    cfg.update(_take(synthesis, f"{where}.synthesis_kwargs", s_names, {"kernel_size": (3,)}))
    cfg.setdefault("conv_clamp", None)  # NVlabs' default: no clamping (ours is 256)
    return Generator(GeneratorConfig(**cfg))


def _build_discriminator(kwargs: dict, where: str) -> Discriminator:
    nested = ("block_kwargs", "mapping_kwargs", "epilogue_kwargs")
    _require(kwargs, where)
    names = ("c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max", "conv_clamp")
    cfg = _take({k: v for k, v in kwargs.items() if k not in nested}, where, {k: k for k in (*names, "cmap_dim")})
    _take(kwargs.get("block_kwargs"), f"{where}.block_kwargs", {})
    if cfg.get("c_dim"):  # the label mapping; unconditional files may carry any (unused) settings
        d_mapping = {"num_layers": (8,), "lr_multiplier": (0.01,), "embed_features": (None,), "layer_features": (None,)}
        _take(kwargs.get("mapping_kwargs"), f"{where}.mapping_kwargs", {}, d_mapping)
    mbstd = {k: k for k in ("mbstd_group_size", "mbstd_num_channels")}
    cfg.update(_take(kwargs.get("epilogue_kwargs"), f"{where}.epilogue_kwargs", mbstd))
    cfg.setdefault("conv_clamp", None)  # NVlabs' default: no clamping (ours is 256)
    return Discriminator(**cfg)


def _as_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVlabs keeps each ``noise_strength`` as a 0-dim tensor; ours is ``[1]`` (see ``SynthesisLayer``)."""
    return {k: v.reshape(1) if k.endswith("noise_strength") and v.dim() == 0 else v for k, v in state.items()}


def _recorded_clamps(net: nn.Module, record: PersistentRecord) -> None:
    """Give each of our layers the ``conv_clamp`` its NVlabs layer recorded. A file whose settings
    omit ``conv_clamp`` ran without clamping (NVlabs' default), whatever our own default is."""
    for name, module in net.named_modules():
        if not hasattr(module, "conv_clamp"):
            continue
        node = record
        for part in name.split(".") if name else []:
            node = (node.state.get("_modules") or {}).get(part) if isinstance(node, PersistentRecord) else None
        if isinstance(node, PersistentRecord) and "conv_clamp" in node.state:
            clamp = node.state["conv_clamp"]
            if clamp is not None and not isinstance(clamp, int | float):
                raise CheckpointError(f"load_nvlabs_pickle(): {name}.conv_clamp must be a number or None")
            module.conv_clamp = None if clamp is None else float(clamp)


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(map(str, keys[:n])) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _load_exact(net: nn.Module, state: dict[str, torch.Tensor], who: str) -> None:
    """``load_state_dict(strict=True)``, with every mismatch reported in one ``CheckpointError``."""
    ours = net.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    wrong = [(k, list(state[k].shape), list(v.shape)) for k, v in ours.items() if k in state]
    shapes = [f"{k} {theirs} (ours {mine})" for k, theirs, mine in wrong if theirs != mine]
    found = (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
    problems = "; ".join(f"{label}: {_few(keys)}" for label, keys in found if keys)
    if problems:
        raise CheckpointError(f"{who}: the weights do not fit the network their settings describe; {problems}")
    net.load_state_dict(state, strict=True)


def load_nvlabs_pickle(path_or_file: str | Path | IO[bytes], which: str = "G_ema") -> Generator | Discriminator:
    """Our network (in eval mode, on the CPU) from network ``which`` of an NVlabs StyleGAN2 ``.pkl``.

    Args:
        path_or_file: a ``.pkl`` of stylegan2-ada-pytorch or of stylegan3's StyleGAN2 configs.
        which: ``"G_ema"``, ``"G"`` (→ ``Generator``) or ``"D"`` (→ ``Discriminator``).

    Raises:
        CheckpointError: an untrusted or foreign file, a missing network, settings our networks
            lack (e.g. StyleGAN3 layers), or weights that do not fit.
    """
    data = read_nvlabs_pickle(path_or_file)
    record = data.get(which)
    if not isinstance(record, PersistentRecord):
        found = [k for k, v in data.items() if isinstance(v, PersistentRecord)]
        raise CheckpointError(f"load_nvlabs_pickle(): which must name a network of the file {found}; got {which!r}")
    kind, builders = record.class_name, {"Generator": _build_generator, "Discriminator": _build_discriminator}
    if kind not in builders:
        raise CheckpointError(f"load_nvlabs_pickle(): {which} must be a Generator or Discriminator; got {kind}")
    try:
        state = _as_ours(_flat_state(record))
        if any(k.startswith("synthesis.input.") for k in state):
            raise CheckpointError(
                f"load_nvlabs_pickle(): {which} is a StyleGAN3 generator; only StyleGAN2 is supported"
            )
        net = builders[kind](_init_kwargs(record, _G_ARGS if kind == "Generator" else _D_ARGS, which), which)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as err:  # e.g. a bad resolution
        raise CheckpointError(f"load_nvlabs_pickle(): {which} does not describe our {kind} ({err})") from None
    _load_exact(net, state, f"load_nvlabs_pickle({which})")
    _recorded_clamps(net, record)
    return net.eval()


# -- rosinality stylegan2-pytorch ------------------------------------------------------------------


def _rosinality_config(sd: dict) -> GeneratorConfig:
    """Sizes from the tensors: ``style.{1..n_mlp}``, one ``to_rgbs.i`` per resolution above 4."""

    def shape(key: str, dims: int) -> torch.Size:
        t = sd.get(key)
        if not isinstance(t, torch.Tensor) or t.dim() != dims:
            raise CheckpointError(f"load_rosinality(): {key} must be a {dims}-D tensor; not a rosinality generator")
        return t.shape

    n_mlp = next(i for i in range(len(sd) + 1) if f"style.{i + 1}.weight" not in sd)
    n_up = next(i for i in range(len(sd) + 1) if f"to_rgbs.{i}.conv.weight" not in sd)
    w_dim, z_dim = shape("style.1.weight", 2)
    channels = {4: shape("input.input", 4)[1]} | {
        8 * 2**i: shape(f"convs.{2 * i}.conv.weight", 5)[1] for i in range(n_up)
    }
    return GeneratorConfig(
        z_dim=z_dim, w_dim=w_dim, img_resolution=4 * 2**n_up, img_channels=shape("to_rgb1.conv.weight", 5)[1],
        mapping_layers=n_mlp, mapping_lr_multiplier=0.01, channels=channels, architecture="skip", conv_clamp=None,
    )  # fmt: skip


class _Renamed:
    """rosinality's tensors under our names and shapes, every mismatch collected for one error;
    its FIR kernels are dropped (ours are fixed)."""

    def __init__(self, sd: dict, net: nn.Module) -> None:
        self.sd, self.ours = sd, net.state_dict()
        self.out = {k: v for k, v in self.ours.items() if k.endswith("resample_filter")}
        self.used: set[str] = set()
        self.problems: list[str] = []

    def put(self, src: str, dst: str, lead: tuple = (), shape: list | None = None) -> None:
        want, t = shape or [*lead, *self.ours[dst].shape], self.sd.get(src)
        if not isinstance(t, torch.Tensor) or list(t.shape) != list(want):
            found = list(t.shape) if isinstance(t, torch.Tensor) else "missing"
            self.problems.append(f"{src} {found} (expected {want})")
            return
        self.used.add(src)
        self.out[dst] = t.reshape(self.ours[dst].shape)

    def state(self) -> dict[str, torch.Tensor]:
        unexpected = [k for k in self.sd if k not in self.used and not str(k).endswith(".kernel")]
        if self.problems or unexpected:
            found = (("wrong or missing", self.problems), ("unexpected", unexpected))
            raise CheckpointError("load_rosinality(): " + "; ".join(f"{n}: {_few(v)}" for n, v in found if v))
        return self.out


def _rosinality_state(sd: dict, G: Generator, latent_avg: Any) -> dict[str, torch.Tensor]:
    r = _Renamed(sd, G)
    for i in range(G.cfg.mapping_layers):
        r.put(f"style.{i + 1}.weight", f"mapping.fc{i}.weight")
        r.put(f"style.{i + 1}.bias", f"mapping.fc{i}.bias")
    r.put("input.input", "synthesis.b4.const", (1,))
    ups = list(enumerate(G.synthesis.block_resolutions[1:]))
    convs = [("conv1", "b4.conv1")] + [(f"convs.{2 * i + j}", f"b{res}.conv{j}") for i, res in ups for j in (0, 1)]
    for k, (src, dst) in enumerate(convs):  # noise_k belongs to the k-th synthesis layer
        dst = f"synthesis.{dst}"
        r.put(f"{src}.conv.weight", f"{dst}.weight", (1,))
        r.put(f"{src}.conv.modulation.weight", f"{dst}.affine.weight")
        r.put(f"{src}.conv.modulation.bias", f"{dst}.affine.bias")
        r.put(f"{src}.noise.weight", f"{dst}.noise_strength", shape=[1])
        r.put(f"{src}.activate.bias", f"{dst}.bias")
        r.put(f"noises.noise_{k}", f"{dst}.noise_const", (1, 1))
    for src, dst in [("to_rgb1", "b4.torgb")] + [(f"to_rgbs.{i}", f"b{res}.torgb") for i, res in ups]:
        dst = f"synthesis.{dst}"
        r.put(f"{src}.conv.weight", f"{dst}.weight", (1,))
        r.put(f"{src}.conv.modulation.weight", f"{dst}.affine.weight")
        r.put(f"{src}.conv.modulation.bias", f"{dst}.affine.bias")
        r.put(f"{src}.bias", f"{dst}.bias", shape=[1, G.img_channels, 1, 1])
    r.out["mapping.w_avg"] = r.ours["mapping.w_avg"]  # zeros unless the file has latent_avg
    if isinstance(latent_avg, torch.Tensor) and latent_avg.numel() == G.w_dim:
        r.out["mapping.w_avg"] = latent_avg.reshape(G.w_dim)
    elif latent_avg is not None:
        r.problems.append(f"latent_avg (expected a tensor of {G.w_dim} values)")
    return r.state()


def _rosinality_discriminator(sd: dict) -> Discriminator:
    """A resnet ``Discriminator`` sized from the tensors (``convs.0`` fromRGB, one ``convs.i``
    block per halving down to 4×4), with rosinality's weights."""
    fromrgb = sd.get("convs.0.0.weight")
    if not isinstance(fromrgb, torch.Tensor) or fromrgb.dim() != 4:
        raise CheckpointError(
            "load_rosinality(): convs.0.0.weight must be a 4-D tensor; not a rosinality discriminator"
        )
    blocks = next(i for i in range(1, len(sd) + 2) if f"convs.{i}.conv1.0.weight" not in sd) - 1
    if not blocks:
        raise CheckpointError("load_rosinality(): no convs.1 block; not a rosinality discriminator")
    resolutions = [4 * 2 ** (blocks - i) for i in range(blocks)]  # the blocks' input sizes, largest first
    channels = {resolutions[0]: fromrgb.shape[0]}
    for i, res in enumerate(resolutions, start=1):
        weight = sd.get(f"convs.{i}.conv2.1.weight")
        channels[res // 2] = weight.shape[0] if isinstance(weight, torch.Tensor) and weight.dim() == 4 else 0
    D = Discriminator(img_resolution=4 * 2**blocks, img_channels=fromrgb.shape[1], channels=channels, conv_clamp=None)
    r = _Renamed(sd, D)
    # (weight, bias) of each layer: a ConvLayer holds [blur,] conv and its activation's bias
    layers = [("convs.0.0", "convs.0.1", f"b{resolutions[0]}.fromrgb")]
    for i, res in enumerate(resolutions, start=1):
        layers += [(f"convs.{i}.conv1.0", f"convs.{i}.conv1.1", f"b{res}.conv0"),
                   (f"convs.{i}.conv2.1", f"convs.{i}.conv2.2", f"b{res}.conv1"),
                   (f"convs.{i}.skip.1", None, f"b{res}.skip")]  # fmt: skip
    layers += [("final_conv.0", "final_conv.1", "b4.conv"), ("final_linear.0", "final_linear.0", "b4.fc"),
               ("final_linear.1", "final_linear.1", "b4.out")]  # fmt: skip
    for weight, bias, dst in layers:
        r.put(f"{weight}.weight", f"{dst}.weight")
        if bias:
            r.put(f"{bias}.bias", f"{dst}.bias")
    _load_exact(D, r.state(), "load_rosinality(d)")
    return D


def load_rosinality(path_or_file: str | Path | IO[bytes], key: str = "g_ema") -> Generator | Discriminator:
    """Our network (eval mode, CPU) from entry ``key`` of a rosinality ``stylegan2-pytorch``
    ``.pt``, sizes inferred from the tensors, no conv clamping. ``g_ema`` or ``g``: a ``skip``
    ``Generator``, ``w_avg`` from ``latent_avg`` when present (zeros otherwise, so truncation then
    pulls towards 0); ``d``: a ``resnet`` ``Discriminator``.

    Raises:
        CheckpointError: the file is not weights-only loadable (``argparse.Namespace`` is also
            allowed, for the ``args`` of training runs), lacks ``key``, or its tensors do not fit.
    """
    allow = getattr(torch.serialization, "safe_globals", None)
    try:
        with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
            ckpt = torch.load(path_or_file, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # torch refused a global, or the file is no torch checkpoint
        raise CheckpointError(
            f"load_rosinality(): refused a file that is not weights-only loadable ({_reason(err)})"
        ) from None
    if isinstance(ckpt, dict) and key not in ckpt and key.lower() in ckpt:
        key = key.lower()
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get(key), dict):
        found = list(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"load_rosinality(): key must name a state dict of the file ({found}); got {key!r}")
    sd = ckpt[key]
    if "final_linear.0.weight" in sd:
        return _rosinality_discriminator(sd).eval()
    G = Generator(_rosinality_config(sd))
    _load_exact(G, _rosinality_state(sd, G, ckpt.get("latent_avg")), f"load_rosinality({key})")
    return G.eval()
