"""Faults of a stream that must lose, double or hang nothing: unreadable and copied ledger files,
two writers under one producer id, shards renamed but never listed, failed batches retried, and
`inspect` on streams with deleted, damaged or miscounted shards."""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from renderloop.datasets.ledger import Ledger, verify
from renderloop.datasets.reader import ShardStream
from renderloop.datasets.storage import Storage, StorageError
from renderloop.errors import RenderloopError
from renderloop.metrics import PrometheusSink

from .helpers import tiny_producer

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _keys(root: str, **kw) -> list[str]:
    return [s["__key__"] for s in ShardStream(root, "s", follow=False, **kw)]


def _assert_intact(root: str) -> list:
    """Every entry names a shard with its checksum, nothing else is in ``shards/``, and a reader
    returns every listed sample once; returns the entries."""
    storage = Storage(root)
    ledger = Ledger(storage, "s")
    entries = ledger.entries()
    for entry in entries:
        data = storage.read_bytes(ledger.rel("shards", entry.shard))
        verify(data, entry)  # raises on a mismatch
    assert storage.list("s/shards") == sorted(e.shard for e in entries)
    keys = _keys(root)
    assert len(keys) == len(set(keys)) == sum(e.count for e in entries)
    return entries


def _assert_batches_once(entries, batches: int) -> None:
    """The entries' batch ranges tile ``0 .. batches - 1``: no gap, no overlap."""
    used = Counter(b for e in entries for b in range(e.seeds[0], e.seeds[1] + 1))
    assert sorted(used) == list(range(batches)) and set(used.values()) == {1}, used


# 1. An unreadable ledger file


def _damage_ledger_file(path: Path, damage: str) -> None:
    text = path.read_text()
    raw = json.loads(text)
    path.write_text(
        {
            "garbage": "\x00 not json",
            "truncated": text[: len(text) // 2],
            "missing_field": json.dumps({k: v for k, v in raw.items() if k != "sha256"}),
            "wrong_type": json.dumps({**raw, "count": "8"}),
            "not_an_object": json.dumps([raw]),
            "path_in_name": json.dumps({**raw, "shard": "../ledger/p0-000000.json"}),
        }[damage]
    )


@pytest.mark.parametrize(
    "damage", ["garbage", "truncated", "missing_field", "wrong_type", "not_an_object", "path_in_name"]
)
def test_an_unreadable_ledger_file_is_skipped_and_counted(tmp_path, damage, caplog):
    root = str(tmp_path)
    tiny_producer(root).run(24)
    _damage_ledger_file(tmp_path / "s" / "ledger" / "p0-000001.json", damage)
    ledger = Ledger(Storage(root), "s")
    assert [e.shard for e in ledger.entries()] == ["p0-000000.tar", "p0-000002.tar"]
    assert ledger.backlog() == 2 and list(ledger.unreadable) == ["p0-000001.json"]
    sink = PrometheusSink()
    stream = ShardStream(root, "s", follow=False, metrics=sink)
    with caplog.at_level(logging.WARNING):
        keys = [s["__key__"] for s in stream]
    assert len(keys) == len(set(keys)) == 16  # the shards behind and after it are read
    assert stream.stats.skipped_shards == 1 and stream.stats.skipped == ["ledger/p0-000001.json"]
    labels = {"stream": "s", "consumer": "reader-r0-main"}
    assert sink.registry.get_sample_value("renderloop_shards_skipped_total", labels) == 1
    assert "p0-000001.json" in caplog.text
    tiny_producer(root, max_backlog_shards=5).run(8)  # a producer appends after it, with backpressure
    assert len(set(_keys(root))) == 24 and Ledger(Storage(root), "s").entries()[-1].index == 3


def test_an_unreadable_ledger_file_is_counted_once_across_ranks_and_followers_end(tmp_path):
    root = str(tmp_path)
    tiny_producer(root, per_shard=4).run(32)  # eight shards
    _damage_ledger_file(tmp_path / "s" / "ledger" / "p0-000003.json", "garbage")
    Ledger(Storage(root), "s").close()
    readers = [
        ShardStream(root, "s", rank=r, world_size=2, follow=True, poll_seconds=0.05, idle_timeout=30) for r in range(2)
    ]
    start = time.monotonic()
    keys = [s["__key__"] for reader in readers for s in reader]
    assert time.monotonic() - start < 20  # ended by CLOSED, not by the idle timeout
    assert len(keys) == len(set(keys)) == 28
    assert sum(r.stats.skipped_shards for r in readers) == 1


# 2. A ledger entry copied under a new name


@pytest.mark.parametrize("copy", ["verbatim", "reindexed"])
def test_a_ledger_entry_copied_under_a_new_name_is_read_once(tmp_path, copy, caplog):
    root = str(tmp_path)
    tiny_producer(root).run(24)
    ledger_dir = tmp_path / "s" / "ledger"
    raw = json.loads((ledger_dir / "p0-000001.json").read_text())
    if copy == "reindexed":
        raw["index"] = 4  # lands in the other reader slot of two
    (ledger_dir / "backup-p0-000001.json").write_text(json.dumps(raw))
    ledger = Ledger(Storage(root), "s")
    assert [e.shard for e in ledger.entries()] == ["p0-000000.tar", "p0-000001.tar", "p0-000002.tar"]
    assert ledger.backlog() == 3 and list(ledger.duplicates) == ["backup-p0-000001.json"]
    with caplog.at_level(logging.WARNING):
        one = _keys(root)
        two = [k for rank in range(2) for k in _keys(root, rank=rank, world_size=2)]
    assert len(one) == len(set(one)) == 24 and sorted(two) == sorted(one)
    assert "backup-p0-000001.json" in caplog.text and "p0-000001.json" in caplog.text
    reader = ShardStream(root, "s", follow=False)
    list(reader)
    assert reader.stats.duplicates == 1 and reader.stats.skipped_shards == 0


# 3. Two writers under one producer id

HOLDER = textwrap.dedent(
    """
    import sys, time
    from tests.datasets.helpers import tiny_producer
    producer = tiny_producer(sys.argv[1], per_shard=8)
    generate = producer.source.generate
    def slow(seed, index):  # keeps the producer writing while the test starts a second one
        time.sleep(0.3)
        return generate(seed, index)
    producer.source.generate = slow
    producer.run(None)
    """
)


def test_a_second_writer_with_the_same_producer_id_is_refused(tmp_path):
    root = str(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, root], cwd=ROOT, env=ENV)
    try:
        ledger = Ledger(Storage(root), "s")
        deadline = time.monotonic() + 60
        while not ledger.entries() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ledger.entries(), "the first producer published nothing"
        second = tiny_producer(root, per_shard=8)
        with pytest.raises(RenderloopError, match="producer p0 is already being written by another process"):
            second.run(16)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # mid-shard: its lease must not outlive it
        holder.wait()
    second.run(16)
    entries = _assert_intact(root)
    assert len(entries) >= 3 and all(e.count == 8 for e in entries)
    ranges = [range(e.seeds[0], e.seeds[1] + 1) for e in entries]
    assert sum(len(r) for r in ranges) == len({b for r in ranges for b in r})  # no batch twice


def test_two_writers_of_one_id_in_one_process_are_refused_too(tmp_path):
    from renderloop.datasets.shards import ShardWriter

    ledger = Ledger(Storage(str(tmp_path)), "s")
    first = ShardWriter(ledger, "p0", 8)
    first.acquire()
    with pytest.raises(RenderloopError, match="producer p0 is already being written"):
        ShardWriter(Ledger(Storage(str(tmp_path)), "s"), "p0", 8).acquire()
    ShardWriter(ledger, "p1", 8).acquire()  # another id writes beside it
    first.release()
    ShardWriter(ledger, "p0", 8).acquire()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("window", ["open", "close"])
def test_a_fork_while_another_thread_takes_or_gives_back_a_lease_leaves_the_child_none(tmp_path, monkeypatch, window):
    """A fork between a lock file's open and its record (or its unrecord and close) would leave the
    child an unrecorded copy that keeps the lease: the fork must wait for the thread to finish."""
    ledger = Ledger(Storage(str(tmp_path)), "s")
    leases = [] if window == "open" else [ledger.lease("p0")]
    in_window, forked = threading.Event(), threading.Event()
    real = getattr(os, window)

    def held_up(target, *args, **kw):
        ours = threading.current_thread() is worker and (target == leases[0].fd if leases else target.endswith(".lock"))
        if not ours:
            return real(target, *args, **kw)
        fd = real(target, *args, **kw) if window == "open" else None
        in_window.set()
        forked.wait(0.5)  # a fork that does not wait for the window comes now
        return fd if window == "open" else real(target)

    def take_or_give_back() -> None:
        if window == "open":
            leases.append(ledger.lease("p0"))
        else:
            leases[0].release()

    monkeypatch.setattr(os, window, held_up)
    worker = threading.Thread(target=take_or_give_back)
    worker.start()
    assert in_window.wait(10)
    ours, theirs = socket.socketpair()
    ours.settimeout(30)
    theirs.settimeout(30)
    pid = os.fork()
    if pid == 0:  # past the fork handlers: it holds whatever it still has until the parent is done
        try:
            ours.close()
            theirs.send(b"x")
            theirs.recv(1)
        finally:
            os._exit(0)
    try:
        forked.set()
        worker.join()
        monkeypatch.undo()
        assert ours.recv(1) == b"x"
        leases[0].release()
        ledger.lease("p0").release()  # ProducerBusyError while the child holds a copy
    finally:
        ours.close()
        os.waitpid(pid, 0)
        theirs.close()


def test_temporary_shards_of_two_writers_never_share_a_name(tmp_path):
    """Storage without a lease (object stores): two writers of one shard name write two files."""
    producers = [tiny_producer(f"memory://{tmp_path.name}", per_shard=8) for _ in range(2)]
    sample = producers[0].source.to_samples(producers[0].source.generate(0, 0), [0] * 4, list("abcd"))[0]
    names = []
    for producer in producers:
        producer.writer.write(sample, 0)  # a shard in progress, nothing published
        names += [n for n in producer.ledger.storage.list("s/shards") if n.endswith(".tmp")]
        producer.writer.abort()  # drops it
    assert len(set(names)) == 2 and all(n.startswith("p0-000000.") for n in names)


# 4. A shard renamed but never listed

KILLED_BEFORE_ENTRY = textwrap.dedent(
    """
    import os, sys
    from renderloop.datasets.ledger import Ledger
    from tests.datasets.helpers import tiny_producer
    publish = Ledger.publish
    def publish_then_die(self, entry):
        if entry.index == 1:
            os._exit(3)  # killed between the shard's rename and its ledger entry
        publish(self, entry)
    Ledger.publish = publish_then_die
    tiny_producer(sys.argv[1], per_shard=8).run(24)
    """
)


def test_a_shard_renamed_but_never_listed_is_removed_when_its_producer_restarts(tmp_path):
    root = str(tmp_path)
    shards = tmp_path / "s" / "shards"
    assert subprocess.run([sys.executable, "-c", KILLED_BEFORE_ENTRY, root], cwd=ROOT, env=ENV).returncode == 3
    assert sorted(p.name for p in shards.iterdir()) == ["p0-000000.tar", "p0-000001.tar"]
    tiny_producer(root, producer="p1").run(8)
    (shards / "p1-000005.tar").write_bytes((shards / "p0-000001.tar").read_bytes())  # another id's orphan
    (shards / "p0-000001.tar.bak").write_bytes(b"not a shard name")
    tiny_producer(root).run(8)
    names = sorted(p.name for p in shards.iterdir())
    assert names == ["p0-000000.tar", "p0-000001.tar.bak", "p0-000002.tar", "p1-000000.tar", "p1-000005.tar"]
    keys = _keys(root)
    assert len(keys) == len(set(keys)) == 24

    _damage_ledger_file(tmp_path / "s" / "ledger" / "p0-000000.json", "garbage")  # listed, unreadably
    tiny_producer(root).run(8)
    assert (shards / "p0-000000.tar").exists() and (shards / "p0-000003.tar").exists()


# 5. A failed batch is generated again by the retry


@pytest.mark.parametrize("fault", ["generate", "write", "publish"])
def test_a_retry_after_a_failure_continues_the_batch_sequence(tmp_path, monkeypatch, fault):
    root = str(tmp_path)
    producer = tiny_producer(root, per_shard=8)  # two batches of four per shard
    failed = []

    def once(fail: bool, error: BaseException) -> None:
        if fail and not failed:
            failed.append(True)
            raise error

    generate = producer.source.generate
    sync_close = producer.ledger.storage.sync_close
    publish = producer.ledger.publish
    if fault == "generate":  # the source fails on the second batch of the second shard
        monkeypatch.setattr(
            producer.source, "generate", lambda s, i: once(i == 3, RuntimeError("CUDA out of memory")) or generate(s, i)
        )
    elif fault == "write":  # storage refuses the second shard's last write
        monkeypatch.setattr(
            producer.ledger.storage,
            "sync_close",
            lambda f: once("p0-000001" in str(f.path), OSError(28, "full")) or sync_close(f),
        )
    else:  # storage refuses the second shard's ledger entry, after its rename
        monkeypatch.setattr(producer.ledger, "publish", lambda e: once(e.index == 1, OSError(5, "I/O")) or publish(e))
    with pytest.raises((RuntimeError, StorageError)):
        producer.run_until(32)
    assert failed and len(producer.ledger.entries()) == 1
    producer.run_until(32)
    entries = _assert_intact(root)
    assert [e.index for e in entries] == [0, 1, 2, 3]
    _assert_batches_once(entries, 8)
    batches = Counter(s["meta.json"]["batch"] for s in ShardStream(root, "s", follow=False))
    assert batches == {b: 4 for b in range(8)}


def test_a_run_that_stops_mid_shard_leaves_no_gap_for_the_next_one(tmp_path):
    root = str(tmp_path)
    producer = tiny_producer(root, per_shard=8)
    producer.run(12)  # a shard and a half: the second shard's last batch is reserved, unused
    producer.run(12)
    _assert_batches_once(_assert_intact(root), 6)


def test_shards_and_their_entries_are_fsynced_and_consumer_records_are_not(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or fsync(fd))
    tiny_producer(str(tmp_path), per_shard=4).run(8)
    assert [Path(p).parent.name for p in synced if "producers" not in p] == ["shards", "ledger"] * 2
    synced.clear()
    assert len(list(ShardStream(str(tmp_path), "s", follow=False))) == 8
    assert synced == [] and Ledger(Storage(str(tmp_path)), "s").consumed() == 2


# 6. `renderloop inspect` on damaged streams


def _inspect(tmp_path: Path, **kw) -> str:
    from renderloop.datasets.inspection import InspectConfig, run

    cfg = InspectConfig(root=str(tmp_path / "data"), stream="s", samples=4, output=str(tmp_path / "sheet.png"), **kw)
    return "\n".join(run(cfg))


def test_inspect_after_consumed_shards_were_deleted(tmp_path):
    root = str(tmp_path / "data")
    tiny_producer(root).run(32)  # four shards of eight
    list(itertools.islice(ShardStream(root, "s", follow=False, delete_consumed=True), 12))  # deletes two
    text = _inspect(tmp_path)
    assert "s: 32 samples in 4 shards" in text
    assert "4 shards listed, 2 present, 2 missing, 0 damaged" in text and "rgb.png" in text
    assert Image.open(tmp_path / "sheet.png").size[1] == 4 * 128


def test_inspect_skips_and_reports_a_damaged_oldest_shard(tmp_path):
    root = str(tmp_path / "data")
    tiny_producer(root).run(24)
    shard = tmp_path / "data" / "s" / "shards" / "p0-000000.tar"
    data = bytearray(shard.read_bytes())
    data[512 + 40] ^= 0xFF  # inside the first member's content: the tar still parses
    shard.write_bytes(bytes(data))
    _damage_ledger_file(tmp_path / "data" / "s" / "ledger" / "p0-000002.json", "garbage")
    text = _inspect(tmp_path)
    assert "2 shards listed, 2 present, 0 missing, 1 damaged" in text
    assert "p0-000000.tar: checksum mismatch" in text and "unreadable ledger file p0-000002.json" in text
    assert "rgb.png" in text and Image.open(tmp_path / "sheet.png").size[1] == 4 * 128  # from shard 1


def test_inspect_checks_ledger_counts_against_the_shards(tmp_path):
    root = str(tmp_path / "data")
    tiny_producer(root).run(24)
    entry = tmp_path / "data" / "s" / "ledger" / "p0-000002.json"
    entry.write_text(json.dumps({**json.loads(entry.read_text()), "count": 9}))
    assert "0 damaged" in _inspect(tmp_path)  # only the shards the sheet needs are read
    text = _inspect(tmp_path, verify_all=True)
    assert "3 shards listed, 3 present, 0 missing, 1 damaged" in text
    assert "p0-000002.tar: ledger says 9 samples, shard holds 8" in text
    assert "3 read: 24 samples" in text
