"""`renderloop export`: chunk and per-sample streams become plain per-sample WebDataset tars that
`tarfile` and `webdataset` open, holding each sample once with the values the reader gives;
damaged and missing shards are skipped and counted, `fields=` keeps only those fields, bad
configs are refused before anything is written, and an interrupted export leaves no partial tar."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from renderloop.cli import main
from renderloop.config import ConfigError
from renderloop.datasets.export import ExportConfig
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.reader import ShardStream
from renderloop.datasets.shards import ShardWriter
from renderloop.datasets.simulator import Simulator
from renderloop.datasets.storage import Storage, StorageConfig

from .helpers import TINY, tiny_producer


def _chunk_stream(root: Path) -> None:
    """24 samples in chunks of 4 (format 2): two shards of p0, one of p1."""
    tiny_producer(str(root)).run(16)
    tiny_producer(str(root), producer="p1").run(8)


def _sample_stream(root: Path) -> None:
    """24 simulator samples as per-sample records (format 1), in three shards of 8."""
    source = Simulator(TINY)
    writer = ShardWriter(Ledger(Storage(str(root)), "s"), "p0", 8)
    for b in range(6):
        keys = [f"p0_{b:09d}_{i:04d}" for i in range(TINY.batch_size)]
        for sample in source.to_samples(source.generate(0, b), [b] * len(keys), keys):
            writer.write(sample, b)
    writer.close()
    writer.release()


STREAMS = {"chunk": _chunk_stream, "sample": _sample_stream}


def _export(root: Path, out: Path, *args: str, capsys=None) -> dict:
    assert main(["export", f"storage.root={root}", "storage.stream=s", f"out={out}", *args]) == 0
    if capsys is not None:
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 1 and lines[0].startswith("exported ")
    return json.loads((out / "s-export.json").read_text())


def _reader(root: Path) -> dict[str, dict]:
    return {s["__key__"]: s for s in ShardStream(str(root), "s", follow=False)}


def _tars(out: Path) -> list[Path]:
    return sorted(out.glob("*.tar"))


def _assert_same(row: dict, sample: dict) -> None:
    """A ``webdataset``-decoded row holds the reader's sample: images bit for bit (PNG members stay
    bytes under ``.decode()``), arrays and JSON values exactly."""
    assert {k for k in row if not k.startswith("__")} == {k for k in sample if k != "__key__"}
    for name, value in sample.items():
        got = row.get(name)
        if name == "__key__":
            continue
        if name.endswith(".png"):
            image = np.asarray(Image.open(io.BytesIO(got)))
            assert image.dtype == np.uint8
            if name == "rgb.png":
                expected = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255
            elif name == "mask.png":
                expected = torch.from_numpy(image > 127).float()[None]
            else:
                expected = torch.from_numpy(image.copy()).long()
            assert torch.equal(expected, value), name
        elif name.endswith(".npy"):
            array = torch.from_numpy(got)
            assert torch.equal(array.permute(2, 0, 1) if name == "normal.npy" else array, value), name
        elif name in ("cam.json", "light.json"):
            assert value.keys() == got.keys()
            for k, v in value.items():
                assert torch.equal(torch.tensor(got[k], dtype=torch.float32), v), f"{name}.{k}"
        elif name.endswith(".txt"):
            assert int(got) == value, name
        else:
            assert got == value, name


@pytest.mark.parametrize("record", list(STREAMS))
def test_an_export_opens_with_tarfile_and_webdataset_and_holds_what_the_reader_gives(record, tmp_path, capsys):
    wds = pytest.importorskip("webdataset")
    root, out = tmp_path / "data", tmp_path / "out"
    STREAMS[record](root)
    assert {e.format for e in Ledger(Storage(str(root)), "s").entries()} == {1 if record == "sample" else 2}
    summary = _export(root, out, "samples_per_shard=5", capsys=capsys)
    expected = _reader(root)
    assert len(expected) == 24

    tars = _tars(out)
    assert [t.name for t in tars] == [f"s-{i:06d}.tar" for i in range(5)] == summary["tars"]
    keys = []
    for tar_path in tars:
        with tarfile.open(tar_path) as tar:  # a plain, uncompressed tar of regular files
            members = tar.getmembers()
        assert all(m.isfile() for m in members)
        names = [m.name for m in members]
        shard_keys = list(dict.fromkeys(n.split(".", 1)[0] for n in names))
        assert len(shard_keys) == (5 if tar_path != tars[-1] else 4)
        for key in shard_keys:  # each sample's members side by side, one per field
            assert sorted(n for n in names if n.startswith(f"{key}.")) == sorted(
                f"{key}.{f}" for f in expected[key] if f != "__key__"
            )
        keys += shard_keys
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(expected)  # each sample once

    rows = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False).decode())
    assert [r["__key__"] for r in rows] == keys
    for row in rows:
        _assert_same(row, expected[row["__key__"]])
    for key, rgb in wds.WebDataset(str(tars[0]), shardshuffle=False).decode("rgb8").to_tuple("__key__", "rgb.png"):
        stored = (expected[key]["rgb.png"] * 255).round().to(torch.uint8)
        assert rgb.dtype == np.uint8 and torch.equal(torch.tensor(rgb).permute(2, 0, 1), stored)

    assert summary["stream"] == "s" and summary["source"].endswith("/data/s")
    assert summary["samples"] == 24 and summary["shards_read"] == 3 and summary["shards_skipped"] == 0
    assert summary["fields"] == sorted(f for f in next(iter(expected.values())) if f != "__key__")
    assert summary["url"].endswith("/out/s-{000000..000004}.tar")


def test_damaged_and_missing_shards_are_skipped_and_counted_as_the_reader_does(tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "out"
    _chunk_stream(root)
    entries = Ledger(Storage(str(root)), "s").entries()
    damaged, missing = root / "s" / "shards" / entries[0].shard, root / "s" / "shards" / entries[2].shard
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    missing.unlink()

    summary = _export(root, out, capsys=capsys)
    stream = ShardStream(str(root), "s", follow=False)
    expected = {s["__key__"] for s in stream}
    assert stream.stats.skipped == [entries[0].shard, entries[2].shard]
    assert len(expected) == 8
    assert summary["samples"] == 8 and summary["shards_read"] == 1 and summary["shards_skipped"] == 2
    assert list(summary["damaged"]) == [entries[0].shard] and "checksum mismatch" in summary["damaged"][damaged.name]
    assert summary["missing"] == [entries[2].shard]
    with tarfile.open(_tars(out)[0]) as tar:
        assert {n.split(".", 1)[0] for n in tar.getnames()} == expected


def test_without_verify_a_damaged_tar_is_still_skipped(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    _chunk_stream(root)
    victim = root / "s" / "shards" / Ledger(Storage(str(root)), "s").entries()[1].shard
    victim.write_bytes(victim.read_bytes()[:5000])
    summary = _export(root, out, "verify=false")
    assert summary["verified"] is False and list(summary["damaged"]) == [victim.name]
    assert summary["samples"] == 16 and summary["shards_read"] == 2


def test_fields_keeps_only_those_fields(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    _chunk_stream(root)
    summary = _export(root, out, "fields=[rgb.png,kp2d.npy]", "samples_per_shard=100")
    with tarfile.open(_tars(out)[0]) as tar:
        names = tar.getnames()
    assert len(names) == 2 * 24
    assert {n.split(".", 1)[1] for n in names} == {"rgb.png", "kp2d.npy"}
    assert summary["fields"] == ["kp2d.npy", "rgb.png"]


def test_a_stream_without_an_intact_sample_or_a_field_asked_for_is_refused(tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "out"
    _chunk_stream(root)
    base = ["export", f"storage.root={root}", "storage.stream=s", f"out={out}"]
    assert main([*base, "fields=[rgb.png,latent.npy]"]) == 2
    assert "no field 'latent.npy'" in capsys.readouterr().err
    for shard in (root / "s" / "shards").iterdir():
        shard.unlink()
    assert main(base) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "no intact sample to export: 3 shards listed, 3 missing" in err[0]
    assert not [p for p in out.rglob("*") if p.is_file()]


BAD = [
    (["out={in}/a_file"], "config error at out:", "is a file"),
    (["out={in}/a_file/sub"], "config error at out:", "is a file"),
    (["out={in}/with_tars"], "config error at out:", "already holds tars (old.tar)"),
    (["storage.stream=nope"], "config error at storage.stream:", "(it has: s); got 'nope'"),
    (["storage.stream=../s"], "config error at storage.stream:", "plain folder name"),
    (["samples_per_shard=0"], "config error at samples_per_shard:", "got 0"),
    (["fields=[rgb.png,nope.png]"], "config error at fields:", "unknown field 'nope.png'"),
    (["fields=[]"], "config error at fields:", "got []"),
    (["storage.root=nosuch://x"], "config error at storage.root:", "nosuch"),
]


@pytest.mark.parametrize("args, key, needle", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_config_is_one_line_and_exit_2_before_anything_is_written(args, key, needle, tmp_path, capsys):
    root, inputs = tmp_path / "data", tmp_path / "in"
    tiny_producer(str(root)).run(8)
    (inputs / "with_tars").mkdir(parents=True)
    (inputs / "with_tars" / "old.tar").write_bytes(b"")
    (inputs / "a_file").write_text("")
    before = sorted(tmp_path.rglob("*"))
    args = [a.format(**{"in": inputs}) for a in args]
    assert main(["export", f"storage.root={root}", "storage.stream=s", f"out={tmp_path}/out", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"renderloop export: {key}") and needle in err[0], err
    assert sorted(tmp_path.rglob("*")) == before


def test_the_stream_and_out_have_no_defaults(tmp_path, capsys):
    for args, key in ((["out=x"], "storage.stream"), (["storage.stream=s"], "out")):
        assert main(["export", f"storage.root={tmp_path}", *args]) == 2
        assert f"config error at {key}: " in capsys.readouterr().err
    with pytest.raises(ConfigError, match="config error at samples_per_shard: ") as err:
        ExportConfig(
            storage=StorageConfig(root=str(tmp_path), stream="s"), out=str(tmp_path / "o"), samples_per_shard=-1
        )
    assert err.value.key == "samples_per_shard"


def test_overwrite_replaces_this_streams_export_only(tmp_path):
    root, out = tmp_path / "data", tmp_path / "out"
    _chunk_stream(root)
    _export(root, out, "samples_per_shard=5")
    (out / "other-000000.tar").write_bytes(b"")
    summary = _export(root, out, "samples_per_shard=10", "overwrite=true")
    assert [t.name for t in _tars(out)] == ["other-000000.tar", "s-000000.tar", "s-000001.tar", "s-000002.tar"]
    assert summary["tars"] == ["s-000000.tar", "s-000001.tar", "s-000002.tar"] and summary["samples"] == 24


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_an_interrupted_export_leaves_only_complete_tars(error, tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "data", tmp_path / "out"
    _chunk_stream(root)
    from renderloop.datasets import export as module

    added = []
    add = module.TarStream.add

    def failing(self, name, parts):
        added.append(name)
        if len(added) > 25:  # midway through the second tar's first sample
            raise error
        add(self, name, parts)

    monkeypatch.setattr(module.TarStream, "add", failing)
    argv = ["export", f"storage.root={root}", "storage.stream=s", f"out={out}", "samples_per_shard=2"]
    if error is KeyboardInterrupt:
        with pytest.raises(KeyboardInterrupt):
            main(argv)
    else:  # storage refusing a write is a run error: exit 1, one line
        assert main(argv) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "storage refused a write" in err[0] and "1 complete tar kept, no partial one" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["s-000000.tar"]  # no temporary file, no summary
    with tarfile.open(out / "s-000000.tar") as tar:
        assert len(tar.getnames()) == 2 * 10

    monkeypatch.undo()
    (out / "s-000003.1234_abcd1234.tar.tmp").write_bytes(b"half")  # as a killed export leaves it
    summary = _export(root, out, "overwrite=true")
    assert sorted(p.name for p in out.iterdir()) == ["s-000000.tar", "s-export.json"]
    assert summary["samples"] == 24
