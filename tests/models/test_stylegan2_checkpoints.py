"""Published StyleGAN2 checkpoints: NVlabs pickles (read without running anything they hold) and
rosinality state dicts load into networks with exactly the fixture network's outputs; malicious,
foreign or mismatched files raise ``CheckpointError`` without side effects.

The NVlabs fixtures are written here, with our own networks: each module pickles like an NVlabs
persistent object (its ``__dict__`` as ``state``, children as nested persistent objects), through
stand-in ``torch_utils.persistence`` and ``dnnlib.util`` modules that exist only while pickling.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from renderloop.models.stylegan2 import (
    CheckpointError,
    Discriminator,
    Generator,
    GeneratorConfig,
    load_nvlabs_pickle,
    load_rosinality,
    read_nvlabs_pickle,
)
from renderloop.models.stylegan2.checkpoints import PersistentRecord

SOURCE = "raise SystemExit('source must never run')"
FAKE_MODULES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")


def _tiny_cfg(**kw) -> GeneratorConfig:
    base = {"z_dim": 32, "w_dim": 32, "img_resolution": 16, "channel_base": 256, "channel_max": 32, "mapping_layers": 2}
    return GeneratorConfig(**(base | kw))


def _randomized(net: nn.Module, seed: int = 1) -> nn.Module:
    """Random values everywhere (biases, noise strengths and ``w_avg`` start at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not name.endswith("resample_filter"):
                t.add_(0.2 * torch.randn(t.shape, generator=gen))
    return net.eval()


def _tiny_generator(**kw) -> Generator:
    return _randomized(Generator(_tiny_cfg(**kw)))


def _tiny_discriminator(c_dim: int = 0, **kw) -> Discriminator:
    return _randomized(Discriminator(16, c_dim=c_dim, channel_base=256, channel_max=32, **kw))


# -- NVlabs-format fixtures -------------------------------------------------------------------------


@contextlib.contextmanager
def _nvlabs_modules():
    """Stand-ins for ``torch_utils.persistence`` and ``dnnlib.util``, registered while pickling."""

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("never called: fixtures are only written")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    mods = {name: types.ModuleType(name) for name in FAKE_MODULES}
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods["torch_utils"].persistence = mods["torch_utils.persistence"]
    mods["dnnlib.util"].EasyDict = EasyDict
    mods["dnnlib"].util = mods["dnnlib.util"]
    assert not set(mods) & set(sys.modules)
    sys.modules.update(mods)
    try:
        yield types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)
    finally:
        for name in FAKE_MODULES:
            del sys.modules[name]


class _Persistent:
    """Pickles as NVlabs' persistence does: ``_reconstruct_persistent_obj(meta)``."""

    def __init__(self, reconstruct, meta: dict):
        self.reconstruct, self.meta = reconstruct, meta

    def __reduce__(self):
        return self.reconstruct, (self.meta,)


def _persistent(module: nn.Module, fake, init_kwargs: dict | None = None, class_name: str | None = None):
    state = {k: v for k, v in vars(module).items() if k != "cfg"}  # its __dict__, less our config object
    state["_parameters"], state["_buffers"] = OrderedDict(module._parameters), OrderedDict(module._buffers)
    if "noise_strength" in state["_parameters"]:  # NVlabs keeps it as a 0-dim tensor
        state["_parameters"]["noise_strength"] = nn.Parameter(module.noise_strength.detach().reshape([]))
    state["_modules"] = OrderedDict((name, _persistent(child, fake)) for name, child in module._modules.items())
    state["_init_args"], state["_init_kwargs"] = (), init_kwargs or {}
    if "weight_gain" in state:  # NVlabs computes gains with numpy
        state["weight_gain"] = np.float64(state["weight_gain"])
    name = class_name or type(module).__name__
    meta = {"type": "class", "version": 4, "module_src": SOURCE, "class_name": name, "state": state}
    return _Persistent(fake.reconstruct, meta)


def _g_kwargs(fake, cfg: GeneratorConfig, stylegan3_repo: bool = False) -> dict:
    """A ``Generator``'s ``_init_kwargs``: stylegan2-ada nests ``synthesis_kwargs``, stylegan3 does not."""
    mapping = fake.EasyDict(num_layers=cfg.mapping_layers, lr_multiplier=0.01, w_avg_beta=cfg.w_avg_beta)
    synthesis = fake.EasyDict(
        channel_base=cfg.channel_base, channel_max=cfg.channel_max, num_fp16_res=4, conv_clamp=cfg.conv_clamp
    )
    kw = {"z_dim": cfg.z_dim, "c_dim": cfg.c_dim, "w_dim": cfg.w_dim, "img_resolution": cfg.img_resolution,
          "img_channels": cfg.img_channels, "mapping_kwargs": mapping}  # fmt: skip
    if stylegan3_repo:
        return kw | synthesis | {"fused_modconv_default": "inference_only"}
    return kw | {"synthesis_kwargs": fake.EasyDict(synthesis, architecture=cfg.architecture)}


def _d_kwargs(fake, D: Discriminator) -> dict:
    # Unconditional files converted from TensorFlow carry an unused label mapping of 0 layers.
    mapping = fake.EasyDict() if D.c_dim else fake.EasyDict(num_layers=0, lr_multiplier=0.1)
    return {"c_dim": D.c_dim, "img_resolution": 16, "img_channels": 3, "architecture": "resnet",
            "channel_base": 256, "channel_max": 32, "num_fp16_res": 4, "conv_clamp": 256, "cmap_dim": None,
            "block_kwargs": fake.EasyDict(freeze_layers=0), "mapping_kwargs": mapping,
            "epilogue_kwargs": fake.EasyDict(mbstd_group_size=4, mbstd_num_channels=1)}  # fmt: skip


def _write_nvlabs(path, G=None, D=None, *, stylegan3_repo=False, g_edit=None, d_edit=None, protocol=4) -> None:
    """An NVlabs-style snapshot; ``g_edit``/``d_edit`` change the init kwargs before pickling."""
    G = G if G is not None else _tiny_generator()
    D = D if D is not None else _tiny_discriminator()
    with _nvlabs_modules() as fake:
        g_kw, d_kw = _g_kwargs(fake, G.cfg, stylegan3_repo), _d_kwargs(fake, D)
        (g_edit or (lambda kw: None))(g_kw)
        (d_edit or (lambda kw: None))(d_kw)
        pipe = nn.Module()
        pipe.register_buffer("p", torch.zeros([]))
        data = {
            "G": _persistent(G, fake, copy.deepcopy(g_kw)),
            "D": _persistent(D, fake, d_kw),
            "G_ema": _persistent(G, fake, g_kw),
            "augment_pipe": _persistent(pipe, fake, {"xflip": 1}, class_name="AugmentPipe"),
            "training_set_kwargs": fake.EasyDict(path="ffhq.zip", resolution=16, use_labels=False),
        }
        blob = pickle.dumps(data, protocol=protocol)
    if protocol == 3:  # as numpy 1 writes it (protocol 3 names globals in plain text)
        blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    Path(path).write_bytes(blob)


def _assert_same_images(G_ref: Generator, G: Generator) -> None:
    z = torch.randn(4, G_ref.z_dim, generator=torch.Generator().manual_seed(2))
    c = torch.eye(4)[:, : G_ref.c_dim] if G_ref.c_dim else None
    for psi in (1.0, 0.7):
        want = G_ref(z, c, truncation_psi=psi, noise_mode="const")
        assert torch.equal(G(z, c, truncation_psi=psi, noise_mode="const"), want)


@pytest.mark.parametrize("protocol", [3, 4])
@pytest.mark.parametrize("c_dim", [0, 4])
def test_nvlabs_generator_roundtrip_cpu(tmp_path, protocol, c_dim):
    G = _tiny_generator(c_dim=c_dim)
    _write_nvlabs(tmp_path / "snap.pkl", G, protocol=protocol)
    numpy_module = b"numpy.core.multiarray" if protocol == 3 else b"numpy._core.multiarray"
    assert numpy_module in (tmp_path / "snap.pkl").read_bytes()
    assert not set(FAKE_MODULES) & set(sys.modules)  # loading needs none of them
    G2 = load_nvlabs_pickle(tmp_path / "snap.pkl")
    assert isinstance(G2, Generator) and not G2.training and G2.cfg == G.cfg
    _assert_same_images(G, G2)
    with open(tmp_path / "snap.pkl", "rb") as f:  # an open file works too
        _assert_same_images(G, load_nvlabs_pickle(f, which="G"))


def test_nvlabs_files_without_conv_clamp_load_unclamped_cpu(tmp_path):
    # stylegan2-ada-pytorch's networks default to conv_clamp=None and its snapshots then omit it;
    # each layer records its own value, which is what the loader must use (ours defaults to 256).
    G = _tiny_generator(conv_clamp=None)
    with torch.no_grad():  # activations large enough that a clamp at 256 would change the images
        for name, p in G.named_parameters():
            if name.endswith("affine.bias"):
                p.add_(300.0)
    D = _tiny_discriminator(conv_clamp=None)

    def no_clamp(kw):
        kw.get("synthesis_kwargs", kw).pop("conv_clamp", None)
        kw.pop("conv_clamp", None)

    _write_nvlabs(tmp_path / "snap.pkl", G, D, g_edit=no_clamp, d_edit=no_clamp)
    G2, D2 = load_nvlabs_pickle(tmp_path / "snap.pkl"), load_nvlabs_pickle(tmp_path / "snap.pkl", which="D")
    assert G2.cfg.conv_clamp is None and all(m.conv_clamp is None for m in G2.modules() if hasattr(m, "conv_clamp"))
    _assert_same_images(G, G2)
    clamped = _tiny_generator(conv_clamp=256.0)
    clamped.load_state_dict(G.state_dict())
    z = torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(clamped(z, None, noise_mode="const"), G2(z, None, noise_mode="const"))  # the test can fail
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(D2(x, None), D(x, None))


@pytest.mark.parametrize("architecture", ["skip", "resnet", "orig"])
def test_nvlabs_stylegan3_repo_layout_cpu(tmp_path, architecture):
    # stylegan3's training.networks_stylegan2.Generator takes its synthesis settings as top-level kwargs.
    G = _tiny_generator(architecture=architecture)
    g_edit = lambda kw: kw.update(architecture=architecture)
    _write_nvlabs(tmp_path / "snap.pkl", G, stylegan3_repo=True, g_edit=g_edit)
    _assert_same_images(G, load_nvlabs_pickle(tmp_path / "snap.pkl"))


@pytest.mark.parametrize("c_dim", [0, 4])
def test_nvlabs_discriminator_roundtrip_cpu(tmp_path, c_dim):
    D = _tiny_discriminator(c_dim)
    _write_nvlabs(tmp_path / "snap.pkl", D=D)
    D2 = load_nvlabs_pickle(tmp_path / "snap.pkl", which="D")
    assert isinstance(D2, Discriminator)
    img = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    c = torch.eye(4)[:, :c_dim] if c_dim else None
    assert torch.equal(D2(img, c), D(img, c))


def test_read_nvlabs_pickle_keeps_records_and_runs_nothing(tmp_path):
    _write_nvlabs(tmp_path / "snap.pkl")
    data = read_nvlabs_pickle(tmp_path / "snap.pkl")
    assert sorted(data) == ["D", "G", "G_ema", "augment_pipe", "training_set_kwargs"]
    assert data["training_set_kwargs"] == {"path": "ffhq.zip", "resolution": 16, "use_labels": False}
    G = data["G_ema"]
    assert isinstance(G, PersistentRecord) and G.class_name == "Generator" and G.version == 4
    assert G.state["_init_kwargs"]["mapping_kwargs"] == {"num_layers": 2, "lr_multiplier": 0.01, "w_avg_beta": 0.995}
    block = G.state["_modules"]["synthesis"].state["_modules"]["b8"]
    assert block.class_name == "SynthesisBlock" and block.state["_modules"]["conv0"].class_name == "SynthesisLayer"
    assert data["augment_pipe"].class_name == "AugmentPipe"
    assert not set(FAKE_MODULES) & set(sys.modules)


def test_nvlabs_saved_on_gpu_maps_to_cpu(tmp_path, monkeypatch):
    # Storages record where they lived; "cuda:0" would fail to load on a machine without CUDA.
    G = _tiny_generator()
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    _write_nvlabs(tmp_path / "snap.pkl", G)
    monkeypatch.undo()
    assert b"cuda:0" in (tmp_path / "snap.pkl").read_bytes()
    G2 = load_nvlabs_pickle(tmp_path / "snap.pkl")
    assert all(t.device.type == "cpu" for t in G2.state_dict().values())
    _assert_same_images(G, G2)


# -- malicious and foreign NVlabs pickles ------------------------------------------------------------


class _Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _PersistentIdPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return "storage/0" if isinstance(obj, _Payload) else None


def _evil_storage(marker) -> bytes:
    """A ``torch.storage._load_from_bytes`` argument whose pickle runs ``os.system``."""
    buf = io.BytesIO()
    torch.save(_Payload(os.system, f"touch {marker}"), buf)
    return pickle.dumps(_Payload(torch.storage._load_from_bytes, buf.getvalue()))


@pytest.mark.parametrize(
    "case, match",
    [
        ("os.system", r"refused the global (posix|os|nt)\.system"),
        ("nested os.system", r"refused the global (posix|os|nt)\.system"),
        ("builtins.eval", r"refused the global builtins\.eval"),
        ("training.networks", r"refused the global training\.networks\.Generator"),
        ("training.networks_stylegan2", r"refused the global training\.networks_stylegan2\.SynthesisLayer"),
        ("persistent id", r"refused the persistent id 'storage/0'"),
        ("storage bytes", r"refused a storage \(.*GLOBAL (posix|os|nt)\.system"),
    ],
)
def test_malicious_nvlabs_pickle_refused_without_side_effects(tmp_path, case, match):
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    if case == "os.system":
        blob = pickle.dumps({"G_ema": _Payload(os.system, command)})
    elif case == "nested os.system":  # deep inside a network's state
        with _nvlabs_modules() as fake:
            rec = _persistent(nn.Linear(2, 2), fake, class_name="FullyConnectedLayer")
            rec.meta["state"]["_buffers"]["evil"] = _Payload(os.system, command)
            blob = pickle.dumps({"G_ema": rec})
    elif case == "builtins.eval":
        blob = pickle.dumps({"G_ema": _Payload(eval, f"__import__('os').system({command!r})")})
    elif case == "training.networks":
        blob = b"\x80\x04ctraining.networks\nGenerator\n)\x81."  # GLOBAL, EMPTY_TUPLE, NEWOBJ
    elif case == "training.networks_stylegan2":
        blob = b"\x80\x04ctraining.networks_stylegan2\nSynthesisLayer\n)\x81."
    elif case == "persistent id":
        buf = io.BytesIO()
        _PersistentIdPickler(buf).dump({"G_ema": _Payload(print)})
        blob = buf.getvalue()
    else:
        blob = _evil_storage(marker)
    (tmp_path / "evil.pkl").write_bytes(blob)
    with pytest.raises(CheckpointError, match=match):
        load_nvlabs_pickle(tmp_path / "evil.pkl")
    with pytest.raises(CheckpointError, match=match):  # an open file too
        read_nvlabs_pickle(io.BytesIO(blob))
    assert not marker.exists()
    if case == "os.system":  # the payload is real: a plain unpickler runs it
        pickle.loads(blob)
        assert marker.exists()


def test_foreign_or_incomplete_nvlabs_files_refused(tmp_path):
    (tmp_path / "text.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="not a readable NVlabs pickle"):
        load_nvlabs_pickle(tmp_path / "text.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError, match="must hold a dict; got list"):
        load_nvlabs_pickle(tmp_path / "list.pkl")
    _write_nvlabs(tmp_path / "snap.pkl")
    with pytest.raises(CheckpointError, match=r"which must name a network of the file .*'G_ema'.*; got 'G_avg'"):
        load_nvlabs_pickle(tmp_path / "snap.pkl", which="G_avg")
    with pytest.raises(CheckpointError, match="augment_pipe must be a Generator or Discriminator; got AugmentPipe"):
        load_nvlabs_pickle(tmp_path / "snap.pkl", which="augment_pipe")


def _set_synthesis(**kw):
    return lambda g_kw: g_kw["synthesis_kwargs"].update(kw)


@pytest.mark.parametrize(
    "g_edit, match",
    [
        (_set_synthesis(channel_max=64), r"wrong shape: synthesis\.b4\.const \[32, 4, 4\] \(ours \[64, 4, 4\]\)"),
        (lambda kw: kw.update(img_resolution=32), r"missing: .*synthesis\.b32"),
        (lambda kw: kw["mapping_kwargs"].update(num_layers=3), r"missing: mapping\.fc2\.weight"),
        (_set_synthesis(resample_filter=[1, 2, 1]), r"G_ema\.synthesis_kwargs\.resample_filter=\[1, 2, 1\] is not"),
        (_set_synthesis(magnitude_ema_beta=0.999), r"G_ema\.synthesis_kwargs\.magnitude_ema_beta=0\.999 is not"),
        (lambda kw: kw["mapping_kwargs"].update(layer_features=64), r"G_ema\.mapping_kwargs\.layer_features=64"),
        (lambda kw: kw.pop("z_dim"), r"G_ema\.z_dim is missing"),
        (_set_synthesis(architecture="fancy"), r"G_ema does not describe our Generator .*architecture"),
    ],
)
def test_nvlabs_generator_mismatch_refused(tmp_path, g_edit, match):
    _write_nvlabs(tmp_path / "snap.pkl", g_edit=g_edit)
    with pytest.raises(CheckpointError, match=match):
        load_nvlabs_pickle(tmp_path / "snap.pkl")


@pytest.mark.parametrize(
    "c_dim, d_edit, match",
    [
        (0, lambda kw: kw.update(architecture="skip"), r"D does not describe our Discriminator .*architecture"),
        (0, lambda kw: kw.update(c_dim=3, mapping_kwargs={}), r"missing: mapping\.embed\.weight"),
        (4, lambda kw: kw["mapping_kwargs"].update(num_layers=2), r"D\.mapping_kwargs\.num_layers=2 is not supported"),
        (0, lambda kw: kw["epilogue_kwargs"].update(mbstd_num_channels=2), r"wrong shape: b4\.conv\.weight"),
        (0, lambda kw: kw["block_kwargs"].update(activation="relu"), r"D\.block_kwargs\.activation='relu' is not"),
        (0, lambda kw: kw.pop("img_resolution"), r"D\.img_resolution is missing"),
    ],
)
def test_nvlabs_discriminator_mismatch_refused(tmp_path, c_dim, d_edit, match):
    _write_nvlabs(tmp_path / "snap.pkl", D=_tiny_discriminator(c_dim), d_edit=d_edit)
    with pytest.raises(CheckpointError, match=match):
        load_nvlabs_pickle(tmp_path / "snap.pkl", which="D")


def test_stylegan3_generator_refused(tmp_path):
    with _nvlabs_modules() as fake:
        G = nn.Module()
        G.synthesis = nn.Module()
        G.synthesis.input = nn.Linear(2, 2)
        rec = _persistent(G, fake, class_name="Generator")
        rec.meta["state"]["_modules"]["synthesis"].meta["state"]["_modules"]["input"].meta["class_name"] = (
            "SynthesisInput"
        )
        (tmp_path / "sg3.pkl").write_bytes(pickle.dumps({"G_ema": rec}))
    with pytest.raises(CheckpointError, match="StyleGAN3 generator; only StyleGAN2"):
        load_nvlabs_pickle(tmp_path / "sg3.pkl")


# -- rosinality ------------------------------------------------------------------------------------


def _rosinality_state_dict(G: Generator) -> dict[str, torch.Tensor]:
    """``G``'s tensors under rosinality's names and shapes (FIR kernels included, as in its files)."""
    sd, out = G.state_dict(), {}
    for i in range(G.cfg.mapping_layers):
        out[f"style.{i + 1}.weight"], out[f"style.{i + 1}.bias"] = (
            sd[f"mapping.fc{i}.weight"],
            sd[f"mapping.fc{i}.bias"],
        )
    out["input.input"] = sd["synthesis.b4.const"][None]
    res = G.synthesis.block_resolutions
    ours = ["b4.conv1"] + [f"b{r}.conv{j}" for r in res[1:] for j in (0, 1)]
    theirs = ["conv1"] + [f"convs.{k}" for k in range(2 * len(res) - 2)]
    kernel = torch.tensor([[1.0, 3, 3, 1]]).T @ torch.tensor([[1.0, 3, 3, 1]]) / 64
    for k, (src, dst) in enumerate(zip(ours, theirs, strict=True)):
        src = f"synthesis.{src}"
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1)
        out[f"{dst}.activate.bias"] = sd[f"{src}.bias"]
        out[f"noises.noise_{k}"] = sd[f"{src}.noise_const"][None, None]
        if src.endswith("conv0"):
            out[f"{dst}.conv.blur.kernel"] = kernel * 4
    for i, r in enumerate(res):
        dst, src = ("to_rgb1" if i == 0 else f"to_rgbs.{i - 1}"), f"synthesis.b{r}.torgb"
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, -1, 1, 1)
        if i:
            out[f"{dst}.upsample.kernel"] = kernel * 4
    return {k: v.clone() for k, v in out.items()}


def _rosinality_generator(**kw) -> Generator:
    return _tiny_generator(conv_clamp=None, **kw)  # rosinality's networks never clamp


@pytest.mark.parametrize("on_gpu", [False, True])
def test_rosinality_roundtrip_cpu(tmp_path, monkeypatch, on_gpu):
    G = _rosinality_generator(img_resolution=32, channel_base=512, channel_max=32)  # channels 32 … 16
    ckpt = {"g_ema": _rosinality_state_dict(G), "g": _rosinality_state_dict(G), "latent_avg": G.mapping.w_avg.clone(),
            "args": argparse.Namespace(size=32, n_mlp=2, channel_multiplier=2), "ada_aug_p": 0.1}  # fmt: skip
    if on_gpu:
        monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save(ckpt, tmp_path / "r.pt")
    monkeypatch.undo()
    G2 = load_rosinality(tmp_path / "r.pt")
    assert G2.cfg.channels == G.cfg.channels == {4: 32, 8: 32, 16: 32, 32: 16}
    assert (G2.cfg.mapping_layers, G2.cfg.conv_clamp, G2.img_resolution) == (2, None, 32)
    _assert_same_images(G, G2)
    _assert_same_images(G, load_rosinality(tmp_path / "r.pt", key="G"))  # NVlabs spelling of "g"


def test_rosinality_without_latent_avg_has_zero_w_avg(tmp_path):
    G = _rosinality_generator()
    torch.save({"g_ema": _rosinality_state_dict(G)}, tmp_path / "r.pt")
    G2 = load_rosinality(tmp_path / "r.pt")
    assert torch.equal(G2.mapping.w_avg, torch.zeros(32))
    z = torch.randn(2, 32)
    assert torch.equal(G2(z, noise_mode="const"), G(z, noise_mode="const"))


@pytest.mark.parametrize("payload", ["function", "reduce"])
def test_rosinality_not_weights_only_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = os.system if payload == "function" else _Payload(os.system, f"touch {marker}")
    torch.save({"g_ema": _rosinality_state_dict(_rosinality_generator()), "evil": evil}, tmp_path / "r.pt")
    with pytest.raises(CheckpointError, match=r"not weights-only loadable \(.*(posix|os|nt)\.system"):
        load_rosinality(tmp_path / "r.pt")
    assert not marker.exists()


def _edited(sd: dict, key: str, value) -> dict:
    sd = dict(sd)
    if value is None:
        del sd[key]
    else:
        sd[key] = value
    return sd


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda sd: _edited(sd, "conv1.noise.weight", torch.zeros(2)),
            r"conv1\.noise\.weight \[2\] \(expected \[1\]\)",
        ),
        (lambda sd: _edited(sd, "noises.noise_2", None), r"noises\.noise_2 missing \(expected \[1, 1, 8, 8\]\)"),
        (lambda sd: _edited(sd, "convs.1.conv.weight", torch.zeros(1, 32, 16, 3, 3)), r"convs\.1\.conv\.weight"),
        (lambda sd: _edited(sd, "convs.9.conv.weight", torch.zeros(1)), r"unexpected: convs\.9\.conv\.weight"),
        (lambda sd: _edited(sd, "style.1.weight", torch.zeros(32)), r"style\.1\.weight must be a 2-D tensor"),
        (lambda sd: _edited(sd, "input.input", None), r"input\.input must be a 4-D tensor"),
    ],
)
def test_rosinality_mismatch_refused(tmp_path, edit, match):
    torch.save({"g_ema": edit(_rosinality_state_dict(_rosinality_generator()))}, tmp_path / "r.pt")
    with pytest.raises(CheckpointError, match=match):
        load_rosinality(tmp_path / "r.pt")


def test_rosinality_wrong_entries_refused(tmp_path):
    sd = _rosinality_state_dict(_rosinality_generator())
    torch.save({"g_ema": sd, "latent_avg": torch.zeros(5)}, tmp_path / "r.pt")
    with pytest.raises(CheckpointError, match=r"latent_avg \(expected a tensor of 32 values\)"):
        load_rosinality(tmp_path / "r.pt")
    with pytest.raises(CheckpointError, match=r"key must name a state dict of the file .*; got 'd'"):
        load_rosinality(tmp_path / "r.pt", key="d")
    torch.save({"d": {"convs.0.0.weight": torch.zeros(1)}}, tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match="style.1.weight must be a 2-D tensor; not a rosinality generator"):
        load_rosinality(tmp_path / "d.pt", key="d")
    (tmp_path / "text.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not weights-only loadable"):
        load_rosinality(tmp_path / "text.pt")


def _rosinality_discriminator_state_dict(D: Discriminator) -> dict[str, torch.Tensor]:
    """``D``'s tensors under rosinality's names (blur kernels included, as in its files)."""
    sd, kernel = D.state_dict(), torch.tensor([[1.0, 3, 3, 1]]).T @ torch.tensor([[1.0, 3, 3, 1]]) / 64
    top = D.img_resolution
    out = {"convs.0.0.weight": sd[f"b{top}.fromrgb.weight"], "convs.0.1.bias": sd[f"b{top}.fromrgb.bias"]}
    for i, res in enumerate(D.block_resolutions, start=1):
        src, dst = f"b{res}", f"convs.{i}"
        out |= {f"{dst}.conv1.0.weight": sd[f"{src}.conv0.weight"], f"{dst}.conv1.1.bias": sd[f"{src}.conv0.bias"],
                f"{dst}.conv2.0.kernel": kernel, f"{dst}.conv2.1.weight": sd[f"{src}.conv1.weight"],
                f"{dst}.conv2.2.bias": sd[f"{src}.conv1.bias"], f"{dst}.skip.0.kernel": kernel,
                f"{dst}.skip.1.weight": sd[f"{src}.skip.weight"]}  # fmt: skip
    out |= {"final_conv.0.weight": sd["b4.conv.weight"], "final_conv.1.bias": sd["b4.conv.bias"],
            "final_linear.0.weight": sd["b4.fc.weight"], "final_linear.0.bias": sd["b4.fc.bias"],
            "final_linear.1.weight": sd["b4.out.weight"], "final_linear.1.bias": sd["b4.out.bias"]}  # fmt: skip
    return {k: v.clone() for k, v in out.items()}


def test_rosinality_discriminator_roundtrip(tmp_path):
    D = _tiny_discriminator(conv_clamp=None)
    torch.save({"g_ema": _rosinality_state_dict(_rosinality_generator()), "d": _rosinality_discriminator_state_dict(D)},
               tmp_path / "r.pt")  # fmt: skip
    D2 = load_rosinality(tmp_path / "r.pt", key="d")
    assert isinstance(D2, Discriminator) and D2.img_resolution == 16
    assert {k: v.shape for k, v in D2.state_dict().items()} == {k: v.shape for k, v in D.state_dict().items()}
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(D2(x), D(x))


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("convs.1.skip.1.weight", None, r"convs\.1\.skip\.1\.weight missing"),
        ("final_conv.1.bias", torch.zeros(3), r"final_conv\.1\.bias \[3\] \(expected \[32\]\)"),
        ("convs.0.0.weight", torch.zeros(3), r"convs\.0\.0\.weight must be a 4-D tensor; not a rosinality"),
        ("convs.1.conv1.0.weight", None, r"no convs\.1 block"),
        ("extra.weight", torch.zeros(1), r"unexpected: extra\.weight"),
    ],
)
def test_rosinality_discriminator_mismatch_refused(tmp_path, key, value, match):
    torch.save({"d": _edited(_rosinality_discriminator_state_dict(_tiny_discriminator(conv_clamp=None)), key, value)},
               tmp_path / "r.pt")  # fmt: skip
    with pytest.raises(CheckpointError, match=match):
        load_rosinality(tmp_path / "r.pt", key="d")
