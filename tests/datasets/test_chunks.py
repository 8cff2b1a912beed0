"""Chunked shards (format version 2): every field round-trips within its documented error, damaged
or mismatched chunks are refused whole, an unknown version stops the reader naming the shard, old
per-sample shards and sha256 entries still read, mixed streams and split readers see each
sample once, and third-party tools unbatch a chunk."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from renderloop.datasets.chunking import HostCopy, chunk_from_samples, quantize_batch
from renderloop.datasets.chunks import ChunkError, ShardFormatError, chunk_members, parse_chunk
from renderloop.datasets.encodings import decode, encode
from renderloop.datasets.host_batch import decode_batch
from renderloop.datasets.ledger import Ledger, checksum
from renderloop.datasets.reader import ShardStream, check_shard
from renderloop.datasets.shards import ShardWriter
from renderloop.datasets.storage import Storage
from renderloop.datasets.tar import TarStream, tar_files, tar_records
from renderloop.trainers.data import collate

from .helpers import tiny_producer

MAX_NORMAL_DEGREES = 0.4
DEPTH_RELATIVE = 2.0**-11


def _samples(n: int = 5, seed: int = 3) -> list[dict]:
    """Samples with every field a chunk holds (``rgb.jpg`` aside: it would share ``rgb.npy``)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        normal = rng.standard_normal((6, 5, 3)).astype(np.float32)
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        normal[0] = 0  # background
        out.append(
            {
                "__key__": f"p0_{seed:09d}_{i:04d}",
                "rgb.png": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
                "mask.png": (rng.random((6, 5)) > 0.5).astype(np.uint8) * 255,
                "depth.npy": np.where(rng.random((6, 5)) > 0.3, rng.uniform(0.5, 90, (6, 5)), 0).astype(np.float32),
                "normal.npy": normal,
                "seg.png": rng.integers(0, 7, (6, 5), dtype=np.uint8),
                "kp2d.npy": rng.random((4, 2)).astype(np.float32),
                "kp3d.npy": rng.random((4, 3)).astype(np.float32),
                "cam.json": {
                    "K": torch.eye(3),
                    "R": torch.eye(3),
                    "t": torch.tensor([0.0, 0.0, 3.0 + i]),
                    "azimuth": 0.5,
                    "elevation": 0.1,
                    "distance": 3.0,
                },  # fmt: skip
                "light.json": {"direction": [0.0, 0.0, -1.0], "ambient": 0.3, "diffuse": 0.7},
                "latent.npy": rng.standard_normal(16).astype(np.float32),
                "view.txt": i % 2,
                "group.txt": (7 << 40) | i,
                "meta.json": {"source": "test", "seed": 3, "index": i},
            }
        )
    return out


def _write(root: str, chunks, stream: str = "s", per_shard: int = 5):
    writer = ShardWriter(Ledger(Storage(root), stream), "p0", per_shard)
    for chunk in chunks:
        writer.write_chunk(chunk)
    writer.close()
    writer.release()
    return Ledger(Storage(root), stream).entries()


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Degrees between normals ``[..., 3]``."""
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _check_close(original: dict, got: dict) -> None:
    """``got`` (decoded) against the schema sample it came from, within each encoding's error."""
    assert got["__key__"] == original["__key__"]
    assert torch.equal(got["rgb.png"], torch.from_numpy(original["rgb.png"]).permute(2, 0, 1).float() / 255)
    assert torch.equal(got["mask.png"][0], torch.from_numpy(original["mask.png"] > 127).float())
    assert torch.equal(got["seg.png"], torch.from_numpy(original["seg.png"]).long())
    depth, want = got["depth.npy"].numpy(), original["depth.npy"]
    assert (
        depth.dtype == np.float32
        and np.all(np.abs(depth - want) <= DEPTH_RELATIVE * want)
        and np.all(depth[want == 0] == 0)
    )
    normal, want = got["normal.npy"].permute(1, 2, 0).numpy(), original["normal.npy"]
    assert _angles(normal[1:], want[1:]).max() <= MAX_NORMAL_DEGREES and np.all(normal[0] == 0)
    for name in ("kp2d.npy", "kp3d.npy", "latent.npy"):
        assert torch.equal(got[name], torch.from_numpy(original[name]))
    assert torch.equal(got["cam.json"]["t"], original["cam.json"]["t"]) and got["cam.json"]["K"].shape == (3, 3)
    assert float(got["light.json"]["ambient"]) == pytest.approx(0.3)
    assert got["view.txt"] == original["view.txt"] and got["group.txt"] == original["group.txt"]
    assert got["meta.json"] == original["meta.json"]


def test_every_field_round_trips_through_a_chunk_within_its_documented_error(tmp_path):
    samples = _samples()
    chunk = chunk_from_samples("p0_000000003", samples, [3] * 5)
    assert chunk.encodings == {"rgb.png": "unorm8", "mask.png": "bits", "depth.npy": "float16",
                               "normal.npy": "snorm8", "seg.png": "label8", "kp2d.npy": "float32",
                               "kp3d.npy": "float32", "latent.npy": "float32", "view.txt": "int64",
                               "group.txt": "int64"}  # fmt: skip
    _write(str(tmp_path), [chunk])
    read = list(ShardStream(str(tmp_path), "s", follow=False))
    assert len(read) == 5
    for original, got in zip(samples, read, strict=True):
        _check_close(original, got)
    # A host batch decoded on the device means what the collated samples mean.
    (batch,) = ShardStream(str(tmp_path), "s", follow=False, batch_size=5)
    on_device = decode_batch(batch, torch.device("cpu"))
    expected = collate(read)
    assert on_device.keys() == expected.keys() and on_device["key"] == expected["key"]
    for key in ("rgb", "mask", "depth", "normal", "seg", "kp2d", "latent", "view", "group"):
        assert torch.equal(on_device[key], expected[key]), key
        assert on_device[key].dtype == expected[key].dtype and on_device[key].is_contiguous()
    for key in ("cam", "light", "meta"):
        for k in expected[key]:
            same = torch.equal if isinstance(expected[key][k], torch.Tensor) else (lambda a, b: a == b)
            assert same(on_device[key][k], expected[key][k]), (key, k)


def test_normal_and_depth_errors_stay_within_their_documented_bounds():
    rng = np.random.default_rng(1)
    n = rng.standard_normal((1_000_000, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    n[:6] = [[1, 0, 0], [0, -1, 0], [0, 0, 1], [0.5**0.5, 0.5**0.5, 0], [3**-0.5] * 3, [-(3**-0.5)] * 3]
    stored = encode("normal.npy", torch.from_numpy(n).view(1, -1, 1, 3))
    assert stored.dtype == torch.uint8
    back = decode("normal.npy", "snorm8", stored)[0, :, :, 0].T.numpy()
    angles = _angles(back, n)
    assert angles.max() <= MAX_NORMAL_DEGREES and angles.mean() < 0.2
    zero = decode("normal.npy", "snorm8", encode("normal.npy", torch.zeros(1, 1, 1, 3)))
    assert torch.equal(zero, torch.zeros(1, 3, 1, 1))  # background normals stay exactly 0

    depth = torch.from_numpy(rng.uniform(1e-3, 1e4, (1, 1000, 1000)).astype(np.float32))
    back = decode("depth.npy", "float16", encode("depth.npy", depth))
    assert back.dtype == torch.float32 and ((back - depth).abs() / depth).max() <= DEPTH_RELATIVE
    with pytest.raises(ValueError, match=r"depth.npy: values beyond float16's range"):
        quantize_batch({"depth": torch.full((1, 2, 2), 7e4)}, None, HostCopy())


def test_masks_pack_to_bits_and_unpack_at_any_width():
    mask = torch.from_numpy(np.random.default_rng(2).random((3, 4, 13)) > 0.5)
    stored = encode("mask.png", mask)
    assert stored.shape == (3, 4, 2) and stored.dtype == torch.uint8
    assert np.array_equal(np.unpackbits(stored.numpy(), axis=-1)[..., :13], mask.numpy())  # np.packbits order
    assert torch.equal(decode("mask.png", "bits", stored, 13), mask.float().unsqueeze(1))


def _tar_bytes(members: list[tuple[str, list]]) -> bytes:
    buf = io.BytesIO()
    tar = TarStream(buf)
    for name, parts in members:
        tar.add(name, parts)
    tar.close()
    return buf.getvalue()


def _replace_shard(root: Path, entry, data: bytes) -> None:
    """Rewrite a shard and its ledger entry's checksum: damage that a checksum cannot see."""
    (root / "s" / "shards" / entry.shard).write_bytes(data)
    path = root / "s" / "ledger" / entry.ledger_name
    raw = json.loads(path.read_text())
    raw.update(digest=checksum(data, raw["hash"]), bytes=len(data))
    path.write_text(json.dumps(raw))


def test_a_chunk_whose_payload_disagrees_with_its_header_is_refused_and_its_shard_skipped(tmp_path):
    chunk = chunk_from_samples("p0_000000003", _samples(), [3] * 5)
    members = chunk_members(chunk)
    records = dict(tar_records(_tar_bytes(members)))
    with pytest.raises(ChunkError, match=r"shard x.tar, chunk p0_000000003: field 'rgb.png' payload is float16"):
        bad = dict(records["p0_000000003"], **{"rgb.npy": _npy(np.zeros((5, 6, 5, 3), np.float16))})
        parse_chunk("p0_000000003", bad, "x.tar")
    with pytest.raises(ChunkError, match=r"field 'depth.npy' payload is float16 \[4, 6, 5\]"):
        parse_chunk(
            "p0_000000003",
            dict(records["p0_000000003"], **{"depth.npy": _npy(np.zeros((4, 6, 5), np.float16))}),
            "x.tar",
        )
    with pytest.raises(ChunkError, match=r"member 'seg.npy' is missing"):
        parse_chunk("p0_000000003", {k: v for k, v in records["p0_000000003"].items() if k != "seg.npy"}, "x.tar")
    truncated = dict(records["p0_000000003"], **{"rgb.npy": bytes(records["p0_000000003"]["rgb.npy"])[:-7]})
    with pytest.raises(ChunkError, match=r"field 'rgb.png': payload of \d+ bytes does not hold"):
        parse_chunk("p0_000000003", truncated, "x.tar")

    # In a stream the shard is refused whole (a good chunk before the bad one is not delivered).
    entries = _write(str(tmp_path), [_chunk(seed) for seed in range(3)], per_shard=2)
    bad = [
        (n, [_npy(np.zeros((2, 6, 5), np.float32))] if n.endswith(".depth.npy") else p)
        for n, p in chunk_members(_chunk(6))
    ]
    _replace_shard(tmp_path, entries[0], _tar_bytes(chunk_members(_chunk(5)) + bad))
    stream = ShardStream(str(tmp_path), "s", follow=False)
    keys = [s["__key__"] for s in stream]
    assert sorted({k[:12] for k in keys}) == ["p0_000000001", "p0_000000002"] and len(keys) == 4
    assert stream.stats.skipped == [entries[0].shard]


def _chunk(seed: int, n: int = 2):
    return chunk_from_samples(f"p0_{seed:09d}", _samples(n, seed), [seed] * n)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupt_or_truncated_chunk_is_skipped_and_counted_never_half_read(tmp_path, damage):
    entries = _write(str(tmp_path), [_chunk(seed) for seed in range(4)], per_shard=4)
    victim = tmp_path / "s" / "shards" / entries[0].shard
    data = bytearray(victim.read_bytes())
    second = data.index(b"p0_000000001.rgb.npy")  # inside the shard's second chunk
    if damage == "flip":
        data[second + 700] ^= 0xFF
    else:
        data = data[: second + 700]
    victim.write_bytes(bytes(data))
    stream = ShardStream(str(tmp_path), "s", follow=False, batch_size=2)
    batches = list(stream)
    assert len(batches) == 2 and stream.stats.skipped_shards == 1 and stream.stats.skipped == [victim.name]
    assert {k[:12] for b in batches for k in b["key"]} == {"p0_000000002", "p0_000000003"}


def test_an_unknown_format_version_stops_the_reader_with_one_error_naming_the_shard(tmp_path):
    entries = _write(str(tmp_path), [_chunk(0), _chunk(1)], per_shard=2)
    members = chunk_members(_chunk(1))
    header = json.loads(bytes(members[0][1][0]))
    members[0] = (members[0][0], [json.dumps({**header, "format": 3}).encode()])
    _replace_shard(tmp_path, entries[1], _tar_bytes(members))
    with pytest.raises(ShardFormatError, match=rf"shard {entries[1].shard}: chunk p0_000000001 has format version 3"):
        list(ShardStream(str(tmp_path), "s", follow=False))
    path = tmp_path / "s" / "ledger" / entries[1].ledger_name
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": 9}))
    with pytest.raises(ShardFormatError, match=rf"shard {entries[1].shard}: its ledger entry says format version 9"):
        list(ShardStream(str(tmp_path), "s", follow=False, batch_size=2))


def test_mixed_per_sample_and_chunk_shards_in_one_stream_are_read_once_each(tmp_path):
    root = str(tmp_path)
    tiny_producer(root, record="sample").run(16)  # two per-sample shards, sha256
    tiny_producer(root).run(16)  # two chunk shards of the same producer id, xxh3
    entries = Ledger(Storage(root), "s").entries()
    assert [(e.format, e.checksum[0]) for e in entries] == [(1, "xxh3_128")] * 2 + [(2, "xxh3_128")] * 2
    samples = list(ShardStream(root, "s", follow=False, shuffle_buffer=12, seed=4))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) == 32
    batches = list(ShardStream(root, "s", follow=False, shuffle_buffer=12, seed=4, batch_size=8))
    assert [k for b in batches for k in b["key"]] == keys  # the same order, whichever the unit
    by_key = {s["__key__"]: s for s in samples}
    for batch in batches:  # some batches span both formats: their maps are decoded on the host
        decoded = decode_batch(batch, torch.device("cpu"))
        expected = collate([by_key[k] for k in batch["key"]])
        for key in ("rgb", "mask", "seg", "depth", "normal", "kp2d"):
            assert torch.equal(decoded[key], expected[key]), key


def _keys_of(root: str, rank: int, batch_size: int | None) -> list[str]:
    stream = ShardStream(root, "s", rank=rank, world_size=2, follow=False, shuffle_buffer=6, batch_size=batch_size)
    loader = DataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context="fork")
    if batch_size is None:
        return [s["__key__"] for s in loader]
    return [k for batch in loader for k in batch["key"]]


@pytest.mark.parametrize("batch_size", [None, 4])
def test_each_sample_once_over_two_ranks_and_two_workers(tmp_path, batch_size):
    root = str(tmp_path)
    tiny_producer(root, per_shard=4, record="sample").run(16)  # older per-sample shards too
    for producer in ("p0", "p1"):
        tiny_producer(root, producer=producer, per_shard=4).run(32)
    seen = [k for rank in range(2) for k in _keys_of(root, rank, batch_size)]
    assert len(seen) == len(set(seen)) == 80  # every slot's sample count is a multiple of 4


def test_webdataset_unbatches_a_chunk_shard(tmp_path):
    wds = pytest.importorskip("webdataset")
    tiny_producer(str(tmp_path)).run(8)
    entry = Ledger(Storage(str(tmp_path)), "s").entries()[0]
    url = str(tmp_path / "s" / "shards" / entry.shard)
    names = [n for n, _ in tar_files(Path(url).read_bytes())]
    with tarfile.open(url) as tar:  # a plain tar
        assert tar.getnames() == names
    # The pipeline the schema's docstring gives.
    pipeline = wds.WebDataset(url, shardshuffle=False).decode().to_tuple("rgb.npy", "depth.npy", "cam.json").unbatched()
    rows = list(pipeline)
    samples = list(ShardStream(str(tmp_path), "s", follow=False))
    assert len(rows) == len(samples) == 8
    for (rgb, depth, cam), sample in zip(rows, samples, strict=True):
        assert rgb.dtype == np.uint8 and torch.equal(
            torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, sample["rgb.png"]
        )
        assert depth.dtype == np.float16 and torch.equal(torch.from_numpy(depth).float(), sample["depth.npy"])
        assert torch.equal(torch.tensor(cam["K"]), sample["cam.json"]["K"])


def test_sha256_entries_from_before_xxh3_stay_readable_and_verifiable(tmp_path):
    root = str(tmp_path)
    tiny_producer(root, record="sample", checksum="sha256").run(16)
    for path in (tmp_path / "s" / "ledger").iterdir():  # as entries were written before hash, digest, format
        raw = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in raw.items() if k not in ("hash", "digest", "format")}))
    entries = Ledger(Storage(root), "s").entries()
    assert all(e.checksum == ("sha256", e.sha256) and e.format == 1 for e in entries)
    data = (tmp_path / "s" / "shards" / entries[0].shard).read_bytes()
    assert len(check_shard(data, entries[0])) == 8
    with pytest.raises(ValueError, match="checksum mismatch"):
        check_shard(data[:-1] + b"x", entries[0])
    (tmp_path / "s" / "ledger" / "copy-p0-000000.json").write_text(
        (tmp_path / "s" / "ledger" / entries[0].ledger_name).read_text()
    )
    stream = ShardStream(root, "s", follow=False)
    assert len({s["__key__"] for s in stream}) == 16 and stream.stats.duplicates == 1


def test_per_sample_records_of_a_chunk_shard_for_tools_that_read_bytes(tmp_path):
    from renderloop.datasets.schema import decode_sample

    tiny_producer(str(tmp_path)).run(8)
    entry = Ledger(Storage(str(tmp_path)), "s").entries()[0]
    raws = check_shard((tmp_path / "s" / "shards" / entry.shard).read_bytes(), entry)
    samples = list(ShardStream(str(tmp_path), "s", follow=False))
    assert len(raws) == 8 and raws[0]["rgb.png"][:4] == b"\x89PNG"
    for raw, sample in zip(raws, samples, strict=True):
        again = decode_sample(raw, entry.shard)
        for name in ("rgb.png", "mask.png", "depth.npy", "normal.npy", "seg.png", "kp2d.npy"):
            assert torch.equal(again[name], sample[name]), name


def test_chunk_keys_are_stored_as_a_range_when_numbered_and_as_a_list_otherwise():
    for keys in (["a_0007", "a_0008", "a_0009"], ["x", "y", "z"], ["k_09", "k_10", "k_12"]):
        samples = [{"__key__": k, "view.txt": i} for i, k in enumerate(keys)]
        members = chunk_members(chunk_from_samples("c", samples, [1, 1, 2]))
        header = json.loads(bytes(members[0][1][0]))
        assert isinstance(header["keys"], dict) == (keys[0] == "a_0007")
        chunk = parse_chunk("c", dict(tar_records(_tar_bytes(members)))["c"])
        assert chunk.keys == keys and chunk.seeds == [1, 1, 2] and chunk.arrays["view.txt"].tolist() == [0, 1, 2]


def test_chunk_arrays_are_views_of_the_shard_bytes(tmp_path):
    tiny_producer(str(tmp_path)).run(8)
    entry = Ledger(Storage(str(tmp_path)), "s").entries()[0]
    data = (tmp_path / "s" / "shards" / entry.shard).read_bytes()
    key, record = next(iter(tar_records(data)))
    chunk = parse_chunk(key, record, entry.shard)
    rgb = chunk.arrays["rgb.png"]
    assert rgb.shape == (4, 16, 16, 3) and not rgb.flags.owndata and not rgb.flags.writeable
    assert np.shares_memory(rgb, np.frombuffer(data, np.uint8))
    assert math.prod(rgb.shape) == rgb.nbytes
    chunks = list(ShardStream(str(tmp_path), "s", follow=False, fields=["rgb.png"]).chunks())
    assert [c.count for c in chunks] == [4, 4] and chunks[0].fields == ["rgb.png"]
    assert np.array_equal(chunks[0].arrays["rgb.png"], rgb) and not chunks[0].arrays["rgb.png"].flags.owndata


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quantizing_on_the_gpu_gives_the_cpu_chunk_and_decoding_there_the_cpu_batch(tmp_path):
    from renderloop.datasets.simulator import Simulator, SimulatorConfig

    batch = Simulator(SimulatorConfig(resolution=32, batch_size=8)).generate(0, 0)
    on_gpu = {k: v.cuda() for k, v in batch.items()}
    copy = HostCopy()
    stored, widths, host = quantize_batch(on_gpu, None, copy)
    want, want_widths, want_host = quantize_batch(batch, None, HostCopy())
    assert stored.keys() == want.keys() and widths == want_widths
    for name in want:
        assert stored[name].device.type == "cpu" and torch.equal(stored[name], want[name]), name
    assert copy._pinned is not None and copy._pinned.is_pinned()  # one pinned staging buffer, reused
    for key in ("K", "kp2d", "light"):
        assert host[key].device.type == "cpu" and torch.equal(host[key], want_host[key]), key

    tiny_producer(str(tmp_path)).run(8)
    (host_batch,) = ShardStream(str(tmp_path), "s", follow=False, batch_size=8)
    pinned = host_batch.pin_memory()
    assert pinned.buffer.is_pinned() and pinned["key"] == host_batch["key"]
    gpu = decode_batch(pinned, torch.device("cuda"), torch.float32)
    cpu = decode_batch(host_batch, torch.device("cpu"), torch.float32)
    for key in ("rgb", "mask", "depth", "normal", "seg", "kp2d"):  # a CUDA division may differ in the last bit
        assert gpu[key].device.type == "cuda" and torch.allclose(gpu[key].cpu(), cpu[key], rtol=0, atol=1e-6), key


def test_a_source_with_to_columns_makes_the_shards_to_samples_makes(tmp_path):
    from bench.data import _Replay
    from renderloop.datasets.producer import Producer
    from renderloop.datasets.simulator import Simulator, SimulatorConfig

    sim = Simulator(SimulatorConfig(resolution=16, batch_size=4, num_keypoints=3))
    batches = [sim.generate(0, i) for i in range(2)]
    shards = []
    for columns in (False, True):
        ledger = Ledger(Storage(str(tmp_path / str(columns))), "s")
        source = _Replay(sim, batches, columns)
        assert hasattr(source, "to_columns") == columns
        Producer(source, ledger, "p0", samples_per_shard=8).run(14)  # a partial last chunk too
        shards.append([(tmp_path / str(columns) / "s" / "shards" / e.shard).read_bytes() for e in ledger.entries()])
    assert len(shards[0]) == 2 and shards[0] == shards[1]


def _parts_samples(n: int = 3) -> list[dict]:
    """Samples whose mask is exactly their parts' nonzero pixels, as the simulator's are."""
    samples = _samples(n)
    for s in samples:
        s["mask.png"] = (s["seg.png"] != 0).astype(np.uint8) * 255
    return samples


def test_a_mask_that_its_parts_give_is_not_stored_and_reads_back_exactly(tmp_path):
    samples = _parts_samples()
    chunk = chunk_from_samples("p0_000000003", samples, [3] * 3)
    members = dict(chunk_members(chunk))
    header = json.loads(members["p0_000000003.chunk.json"][0])
    assert header["fields"]["mask.png"] == {"member": None, "derived": "seg.png", "encoding": "bits",
                                            "dtype": "uint8", "shape": [3, 6, 1], "width": 5}  # fmt: skip
    assert "p0_000000003.mask.npy" not in members
    _write(str(tmp_path), [chunk])
    for got, original in zip(ShardStream(str(tmp_path), "s", follow=False), samples, strict=True):
        _check_close(original, got)
    (only,) = ShardStream(str(tmp_path), "s", follow=False, fields=["mask.png"], batch_size=3)
    assert set(only) == {"key", "mask"}  # derived from parts it does not deliver
    parts = torch.from_numpy(np.stack([s["seg.png"] for s in samples]))
    assert torch.equal(decode_batch(only, torch.device("cpu"))["mask"][:, 0], (parts != 0).float())

    other = _samples(3)  # masks unrelated to the parts are stored as they are
    assert "p0_000000003.mask.npy" in dict(chunk_members(chunk_from_samples("p0_000000003", other, [3] * 3)))


def test_a_derived_field_the_reader_cannot_make_is_refused():
    records = dict(
        tar_records(_tar_bytes(chunk_members(chunk_from_samples("p0_000000003", _parts_samples(), [3] * 3))))
    )
    record = records["p0_000000003"]
    header = json.loads(bytes(record["chunk.json"]))

    def with_mask_spec(**change) -> dict:
        edited = json.loads(json.dumps(header))
        edited["fields"]["mask.png"].update(change)
        return dict(record, **{"chunk.json": json.dumps(edited).encode()})

    with pytest.raises(ShardFormatError, match=r"derives 'mask.png' from 'depth.npy'.*update renderloop"):
        parse_chunk("p0_000000003", with_mask_spec(derived="depth.npy"), "x.tar")
    with pytest.raises(ChunkError, match=r"field 'mask.png': header \[3, 6, 2\] width 5 does not fit the parts"):
        parse_chunk("p0_000000003", with_mask_spec(shape=[3, 6, 2]), "x.tar")
    no_parts = with_mask_spec()
    edited = json.loads(bytes(no_parts["chunk.json"]))
    del edited["fields"]["seg.png"]
    no_parts = {k: v for k, v in no_parts.items() if k != "seg.npy"} | {"chunk.json": json.dumps(edited).encode()}
    with pytest.raises(ChunkError, match=r"derived from seg.png, which the chunk lacks"):
        parse_chunk("p0_000000003", no_parts, "x.tar")
