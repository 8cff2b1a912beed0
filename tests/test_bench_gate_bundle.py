"""bench.gate_bundle: the gate's generator and oracles leave as small checked files and come back
usable — the generator within fp16 rounding, the oracle bit-exact — and a damaged bundle is refused."""

import json
import shutil

import pytest
import torch

from bench import gate_bundle
from renderloop.models.stylegan2.io import generator_trained_on, load_generator, save_generator
from renderloop.trainers.oracle import Oracle

from .trainers.helpers import gan_method_assets


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    """A gan_gate --work folder: the generator where eval writes it, an oracle run and a curve."""
    root = tmp_path_factory.mktemp("gate")
    assets = gan_method_assets(root / "assets")
    (root / "gan" / "eval").mkdir(parents=True)
    trained_on = {"source": "simulator", "category": "vehicle", "object_seeds": [0, 1000]}
    save_generator(load_generator(assets["checkpoint"]), root / "gan" / "eval" / "generator.pt", trained_on)
    shutil.copytree(assets["oracle"], root / "oracle")
    (root / "curve.jsonl").write_text(json.dumps({"steps": 12, "gate": {"azimuth_tv": True}}) + "\n")
    return root


def test_export_then_restore_gives_the_same_generator_and_oracle(gate, tmp_path):
    manifest = gate_bundle.export(gate, tmp_path / "bundle", part_mib=0.2)
    files = sorted(p.name for p in (tmp_path / "bundle").iterdir())
    assert len(files) <= gate_bundle.MAX_FILES and "manifest.json" in files
    assert all((tmp_path / "bundle" / n).stat().st_size <= 0.2 * 2**20 for n in manifest["sha256"])

    gate_bundle.restore(tmp_path / "bundle", tmp_path / "work")
    before, after = (
        load_generator(gate / "gan" / "eval" / "generator.pt"),
        load_generator(tmp_path / "work" / "gan" / "eval" / "generator.pt"),
    )
    z = torch.randn(4, before.cfg.z_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = before(z, noise_mode="const"), after(z, noise_mode="const")
    assert not torch.equal(a, b)  # fp16 weights: close, not identical
    assert (a - b).abs().max() < 0.02 * a.abs().max()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    o1, o2 = Oracle.load(gate / "oracle", "cpu"), Oracle.load(tmp_path / "work" / "oracle", "cpu")
    assert torch.equal(o1.segment(images), o2.segment(images))
    assert all(torch.equal(x, y) for x, y in zip(o1.viewpoint(images), o2.viewpoint(images), strict=True))
    assert json.loads((tmp_path / "work" / "curve.jsonl").read_text())["steps"] == 12
    restored = tmp_path / "work" / "gan" / "eval" / "generator.pt"
    assert generator_trained_on(restored)["object_seeds"] == [0, 1000]  # what it learned from travels too


def test_weights_are_cut_into_parts_under_the_limit_in_key_order():
    state = {"a": torch.zeros(100), "b": torch.zeros(200), "c": torch.zeros(50), "d": torch.zeros(300)}
    parts = gate_bundle._parts(state, limit=1200)  # 4 bytes per element
    assert [list(p) for p in parts] == [["a", "b"], ["c"], ["d"]]
    with pytest.raises(gate_bundle.BundleError, match="d: 1200 bytes"):
        gate_bundle._parts(state, limit=1000)


def test_a_damaged_bundle_or_a_used_work_folder_is_refused(gate, tmp_path):
    gate_bundle.export(gate, tmp_path / "bundle")
    with pytest.raises(gate_bundle.BundleError, match="exists"):
        gate_bundle.restore(tmp_path / "bundle", gate)
    part = tmp_path / "bundle" / "generator-0.pt"
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(gate_bundle.BundleError, match="checksum"):
        gate_bundle.restore(tmp_path / "bundle", tmp_path / "work")
    assert not (tmp_path / "work").exists()  # nothing written before every file checked
    with pytest.raises(gate_bundle.BundleError, match="run bench.gan_gate"):
        gate_bundle.export(tmp_path / "empty", tmp_path / "out")
