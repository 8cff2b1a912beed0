"""Shard writer, ledger and streaming reader: atomic publication, exactly-once reading across ranks
and workers, corrupt shards skipped, backpressure, and producers killed mid-shard."""

from __future__ import annotations

import io
import itertools
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import xxhash
from PIL import Image
from torch.utils.data import DataLoader

from renderloop.datasets.ledger import Ledger
from renderloop.datasets.reader import ShardStream, shard_slot
from renderloop.datasets.storage import Storage
from renderloop.metrics import PrometheusSink

from .helpers import tiny_producer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_write_publish_read_on_fsspec(tmp_path, scheme):
    root = f"file://{tmp_path}" if scheme == "file" else f"memory://{tmp_path.name}"
    producer = tiny_producer(root)
    producer.run(20)  # 2 full shards + 1 partial
    ledger = Ledger(Storage(root), "s")
    entries = ledger.entries()
    assert [e.count for e in entries] == [8, 8, 4] and [e.index for e in entries] == [0, 1, 2]
    for e in entries:
        data = ledger.storage.read_bytes(ledger.rel("shards", e.shard))
        assert e.checksum == ("xxh3_128", xxhash.xxh3_128_hexdigest(data)) and len(data) == e.bytes
        assert e.format == 2 and e.sha256 is None
    assert not [n for n in ledger.storage.list("s/shards") if n.endswith(".tmp")]
    samples = list(ShardStream(root, "s", follow=False))
    assert len(samples) == 20 and len({s["__key__"] for s in samples}) == 20
    assert samples[0]["rgb.png"].shape == (3, 16, 16) and samples[0]["kp2d.npy"].shape == (3, 2)
    ids = {(s["meta.json"]["batch"], s["meta.json"]["index"]) for s in samples}
    assert len(ids) == 20 and {b for b, _ in ids} == {0, 1, 2, 3, 4}


@pytest.mark.parametrize(
    ("record", "members"),
    [("sample", {"rgb.png", "depth.npy", "meta.json"}), ("chunk", {"chunk.json", "rgb.npy", "depth.npy", "meta.json"})],
)
def test_a_producer_writes_only_the_fields_asked_for_and_plain_tar_headers(tmp_path, record, members):
    producer = tiny_producer(str(tmp_path), fields=["rgb.png", "depth.npy"], record=record)
    producer.run(8)
    ledger = Ledger(Storage(str(tmp_path)), "s")
    data = ledger.storage.read_bytes(ledger.rel("shards", ledger.entries()[0].shard))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        found = tar.getmembers()
    assert {m.name.split(".", 1)[1] for m in found} == members
    records = 8 if record == "sample" else 2  # a chunk per batch of four
    assert len(found) == records * len(members) and not any(m.pax_headers for m in found)  # one 512-byte header each
    sample = next(iter(ShardStream(str(tmp_path), "s", follow=False)))
    assert set(sample) == {"__key__", "rgb.png", "depth.npy", "meta.json"} and sample["depth.npy"].shape == (16, 16)


def test_fields_a_source_does_not_make_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown fields"):
        tiny_producer(str(tmp_path), fields=["rgb.pngg"])
    with pytest.raises(ValueError, match=r"makes no \['latent.npy'\]"):
        tiny_producer(str(tmp_path), fields=["rgb.png", "latent.npy"]).run(8)


def test_a_stream_without_rgb_has_a_contact_sheet(tmp_path):
    from renderloop.datasets.inspection import contact_sheet

    tiny_producer(str(tmp_path), fields=["depth.npy"]).run(8)
    sheet = contact_sheet(Storage(str(tmp_path)), "s", 4, tmp_path / "sheet.png")
    assert Image.open(sheet).size == (16, 4 * 16)  # one depth panel per row


def _read_all(root: str, rank: int, world: int, out: list, errors: list):
    try:
        stream = ShardStream(root, "s", rank=rank, world_size=world, follow=True, poll_seconds=0.05, idle_timeout=60)
        loader = DataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context="fork")
        out.extend(s["__key__"] for s in loader)
    except BaseException as err:  # noqa: BLE001
        errors.append(err)


def test_readers_started_before_producers_see_each_sample_once(tmp_path):
    root = str(tmp_path)
    Ledger(Storage(root), "s")  # nothing published yet
    keys: list[list[str]] = [[], []]
    errors: list = []
    readers = [threading.Thread(target=_read_all, args=(root, r, 2, keys[r], errors)) for r in range(2)]
    for t in readers:
        t.start()
    time.sleep(0.5)
    producers = [tiny_producer(root, producer=f"p{i}", per_shard=4) for i in range(2)]
    threads = [threading.Thread(target=p.run, args=(24,)) for p in producers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    Ledger(Storage(root), "s").close()
    for t in readers:
        t.join(timeout=120)
    assert not errors
    published = [e for e in Ledger(Storage(root), "s").entries()]
    assert len(published) == 12
    seen = keys[0] + keys[1]
    assert len(seen) == 48 and len(set(seen)) == 48  # every sample exactly once
    assert keys[0] and keys[1]  # both ranks got work


def test_epochs_and_shuffle_of_a_finished_stream(tmp_path):
    tiny_producer(str(tmp_path)).run(16)
    plain = [s["__key__"] for s in ShardStream(str(tmp_path), "s", follow=False, epochs=2)]
    shuffled = [s["__key__"] for s in ShardStream(str(tmp_path), "s", follow=False, epochs=2, shuffle_buffer=8, seed=1)]
    assert len(plain) == 32 and sorted(plain) == sorted(shuffled) and plain != shuffled
    again = [s["__key__"] for s in ShardStream(str(tmp_path), "s", follow=False, epochs=2, shuffle_buffer=8, seed=1)]
    assert again == shuffled


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_shard_is_skipped_and_counted(tmp_path, damage):
    tiny_producer(str(tmp_path)).run(24)
    ledger = Ledger(Storage(str(tmp_path)), "s")
    victim = tmp_path / "s" / "shards" / ledger.entries()[1].shard
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[700] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    victim.write_bytes(bytes(data))
    sink = PrometheusSink()
    stream = ShardStream(str(tmp_path), "s", follow=False, metrics=sink)
    samples = list(stream)
    assert len(samples) == 16 and stream.stats.skipped_shards == 1 and stream.stats.skipped == [victim.name]
    assert (
        sink.registry.get_sample_value("renderloop_shards_skipped_total", {"stream": "s", "consumer": "reader-r0-main"})
        == 1
    )


def test_backlog_bound_holds_and_releases(tmp_path):
    root = str(tmp_path)
    producer = tiny_producer(root, per_shard=4, max_backlog_shards=2, poll_seconds=0.02)
    stop = threading.Event()
    thread = threading.Thread(target=producer.run, args=(None, stop))
    thread.start()
    ledger = Ledger(Storage(root), "s")
    time.sleep(1.0)
    assert len(ledger.entries()) == 2  # paused at the bound with no reader
    reader = iter(ShardStream(root, "s", follow=True, poll_seconds=0.02, idle_timeout=5))
    for _ in range(12):  # consume three shards' worth
        next(reader)
    time.sleep(1.0)
    stop.set()
    thread.join(timeout=10)
    published = len(ledger.entries())
    assert published >= 4 and ledger.backlog() <= 2


PRODUCER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from tests.datasets.helpers import tiny_producer
    producer = tiny_producer(sys.argv[1], per_shard=8)
    original = producer.source.generate
    def slow_generate(seed, index):  # from the second shard on, slow: the test kills inside it
        if index >= 2:
            time.sleep(0.5)
        return original(seed, index)
    producer.source.generate = slow_generate
    producer.run(None)
    """
)


def test_appending_with_other_sizes_never_reuses_batches(tmp_path):
    tiny_producer(str(tmp_path), per_shard=16).run(16)
    tiny_producer(str(tmp_path), per_shard=8).run(8)  # another shard size on the same stream
    samples = list(ShardStream(str(tmp_path), "s", follow=False))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == 24 and len(set(keys)) == 24
    images = {s["rgb.png"].numpy().tobytes() for s in samples}
    assert len(images) == 24


def test_split_across_slots_is_balanced(tmp_path):
    from renderloop.datasets.reader import shard_slot

    for producer in ("p0", "p1"):
        tiny_producer(str(tmp_path), producer=producer, per_shard=4).run(32)
    entries = Ledger(Storage(str(tmp_path)), "s").entries()
    for slots in (2, 4):
        counts = [sum(shard_slot(e, slots) == k for e in entries) for k in range(slots)]
        assert max(counts) - min(counts) <= 2, counts


def test_kill_9_mid_shard_leaves_no_partial_shard_and_restart_continues(tmp_path):
    root = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", PRODUCER_SCRIPT, root], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    ledger = Ledger(Storage(root), "s")
    deadline = time.monotonic() + 60
    shards_dir = tmp_path / "s" / "shards"
    while time.monotonic() < deadline:  # one shard published and the next one half written
        if ledger.entries() and any(p.name.endswith(".tmp") for p in shards_dir.glob("*")):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    entries = ledger.entries()
    assert len(entries) == 1 and any(p.name.endswith(".tmp") for p in shards_dir.iterdir())
    assert len(list(ShardStream(root, "s", follow=False))) == 8  # readers see only the complete shard
    restarted = tiny_producer(root, per_shard=8)
    restarted.run(16)
    entries = Ledger(Storage(root), "s").entries()
    names = [e.shard for e in entries]
    assert len(names) == len(set(names)) == 3 and not any(p.name.endswith(".tmp") for p in shards_dir.iterdir())
    assert entries[1].index == 2  # index 1 was the killed, never-published shard: not reused
    ranges = [range(e.seeds[0], e.seeds[1] + 1) for e in entries]
    assert not set(ranges[0]) & set(ranges[1]) and not set(ranges[1]) & set(ranges[2])
    samples = list(ShardStream(root, "s", follow=False))
    assert len(samples) == 24 and len({s["__key__"] for s in samples}) == 24


def test_metrics_endpoint_serves_producer_and_reader_counters(tmp_path):
    import urllib.request

    sink = PrometheusSink()
    port = sink.serve(0)
    try:
        tiny_producer(str(tmp_path), metrics=sink).run(8)
        list(ShardStream(str(tmp_path), "s", follow=False, metrics=sink))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        sink.close()
    assert 'renderloop_samples_generated_total{producer="p0",source="simulator"} 8.0' in text
    assert 'renderloop_samples_consumed_total{consumer="reader-r0-main",stream="s"} 8.0' in text
    assert "renderloop_producer_batch_seconds_bucket" in text and "renderloop_shards_published_total" in text


def test_dataloader_batches_decoded_samples(tmp_path):
    tiny_producer(str(tmp_path)).run(8)
    loader = DataLoader(
        ShardStream(str(tmp_path), "s", follow=False, fields=["rgb.png", "mask.png", "cam.json"]), batch_size=4
    )
    batch = next(iter(loader))
    assert batch["rgb.png"].shape == (4, 3, 16, 16) and batch["mask.png"].shape == (4, 1, 16, 16)
    assert batch["cam.json"]["K"].shape == (4, 3, 3) and len(batch["__key__"]) == 4 and "depth.npy" not in batch


def test_an_endless_reader_without_shards_in_its_slot_raises(tmp_path):
    root = str(tmp_path)
    producer = tiny_producer(root)
    producer.run(8)  # one shard
    producer.ledger.close()
    owner = shard_slot(producer.ledger.entries()[0], 2)
    starved = ShardStream(root, "s", rank=1 - owner, world_size=2, follow=True, epochs=0)
    with pytest.raises(RuntimeError, match="has no shards"):
        next(iter(starved))
    fed = ShardStream(root, "s", rank=owner, world_size=2, follow=True, epochs=0)
    assert len([s for _, s in zip(range(20), fed, strict=False)]) == 20  # repeats its one shard


def test_deleting_consumed_shards_keeps_the_ledger_and_a_resume_goes_on_after_them(tmp_path):
    tiny_producer(str(tmp_path)).run(32)  # four shards of eight
    shards = tmp_path / "s" / "shards"
    first = ShardStream(str(tmp_path), "s", follow=False, delete_consumed=True)
    seen = [s["__key__"] for s in itertools.islice(first, 12)]  # all of shard 0, half of shard 1
    assert sorted(p.name for p in shards.iterdir()) == [
        e.shard for e in Ledger(Storage(str(tmp_path)), "s").entries()[2:]
    ]
    resumed = ShardStream(str(tmp_path), "s", follow=False, delete_consumed=True, skip=[12])
    rest = [s["__key__"] for s in resumed]
    assert len(rest) == 16 and not set(rest) & set(seen)  # shards 2 and 3, nothing seen twice
    assert resumed.stats.skipped_shards == 0 and not list(shards.iterdir())
    assert len(Ledger(Storage(str(tmp_path)), "s").entries()) == 4


def test_read_receipts_count_every_read_of_a_shard_per_pass(tmp_path):
    from renderloop.datasets.inspection import check_stream, summary_lines

    tiny_producer(str(tmp_path)).run(32)  # four shards of eight
    storage = Storage(str(tmp_path))
    ledger = Ledger(storage, "s")
    for rank in (0, 1):
        list(ShardStream(str(tmp_path), "s", rank=rank, world_size=2, follow=False, epochs=2, receipts=True))
    assert ledger.reads() == {(e.shard, epoch): 1 for e in ledger.entries() for epoch in (0, 1)}
    assert "read receipts: 8 reads of 4 shards in 2 passes; 0 shards read more than once" in "\n".join(
        summary_lines(check_stream(storage, "s", rows=1))
    )
    list(ShardStream(str(tmp_path), "s", follow=False, receipts=True))  # a second reader of the first pass
    lines = summary_lines(check_stream(storage, "s", rows=1))
    assert "; 4 shards read more than once in a pass" in lines[-5]
    assert lines[-4:] == [f"  read more than once: {e.shard} (pass 0: 2×)" for e in ledger.entries()]
