"""Checkpoint integrity: manifests, atomic saves, and resume past a damaged or missing checkpoint."""

from __future__ import annotations

import _thread
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from renderloop.cluster.launch import train_worker
from renderloop.errors import InputError
from renderloop.trainers import checkpoint
from renderloop.trainers.checkpoint import MANIFEST, CheckpointStore, damage
from renderloop.trainers.distributed import Dist
from tests.trainers.helpers import debug_config, make_streams

ALONE = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _writer(payload: bytes):
    def write(folder: Path) -> None:
        (folder / "model").mkdir()
        (folder / "model" / "states.pt").write_bytes(payload)
        (folder / "client-rank0.pt").write_bytes(payload[::-1])

    return write


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _store(tmp_path: Path, keep: int = 3) -> CheckpointStore:
    store = CheckpointStore(tmp_path / "checkpoints", keep, ALONE)
    for step in (1, 2):
        store.save(step, _writer(bytes(range(256)) * (step + 8)), {})
    return store


def test_save_moves_a_verified_folder_into_place_with_its_manifest(tmp_path):
    store = _store(tmp_path)
    newest = store.directory / "step00000002"
    manifest = json.loads((newest / MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["client-rank0.pt", "model/states.pt"]
    assert manifest["files"]["model/states.pt"]["bytes"] == 256 * 10
    assert store.latest() == newest and damage(newest) is None
    assert sorted(p.name for p in store.directory.iterdir()) == ["latest", "step00000001", "step00000002"]


def test_a_failed_write_leaves_no_folder_and_latest_on_the_previous_checkpoint(tmp_path):
    store = _store(tmp_path)

    def fail(folder: Path) -> None:
        (folder / "client-rank0.pt").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.save(3, fail, {})
    assert store.latest() == store.directory / "step00000002"
    assert not (store.directory / "step00000003").exists()
    store.save(3, _writer(b"again"), {})  # the next save clears what the failed one left
    assert [p.name for p in store.directory.iterdir() if p.name.startswith(".")] == []


def test_a_save_that_fails_its_check_says_latest_still_names_the_previous_one(tmp_path, monkeypatch):
    store = _store(tmp_path)
    monkeypatch.setattr(checkpoint, "damage", lambda folder, hashes=True: "model/states.pt is missing")
    with pytest.raises(OSError) as failed:
        store.save(3, _writer(b"three"), {})
    assert str(failed.value) == (
        f"checkpoint {store.directory / 'step00000003'} failed its check after writing: model/states.pt is "
        f"missing; {store.directory / 'latest'} still names the previous checkpoint, if there is one"
    )
    monkeypatch.undo()
    assert store.latest() == store.directory / "step00000002"
    assert not (store.directory / "step00000003").exists()


def test_a_save_that_fails_while_pruning_says_latest_names_the_new_one(tmp_path, monkeypatch):
    store = _store(tmp_path, keep=1)

    def prune(newest: Path) -> None:
        raise OSError("Permission denied")

    monkeypatch.setattr(store, "_prune", prune)
    with pytest.raises(OSError) as failed:
        store.save(3, _writer(b"three"), {})
    newest = store.directory / "step00000003"
    assert str(failed.value) == (
        f"checkpoint {newest} was saved and {store.directory / 'latest'} names it, but removing older "
        "checkpoints failed: Permission denied"
    )
    assert store.latest() == newest and damage(newest) is None
    assert (store.directory / "step00000002").exists()  # the prune did not get to it


DAMAGES = {
    "flipped bytes": (lambda d: _flip(d / "model" / "states.pt"), "model/states.pt fails its sha256 check"),
    "truncated file": (lambda d: _truncate(d / "client-rank0.pt"), "client-rank0.pt has 1280 bytes"),
    "missing file": (lambda d: (d / "model" / "states.pt").unlink(), "model/states.pt is missing"),
    "missing folder": (shutil.rmtree, "the folder is missing"),
    "no manifest": (lambda d: (d / MANIFEST).unlink(), f"no {MANIFEST}"),
}


@pytest.mark.parametrize("kind", DAMAGES)
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, caplog, kind):
    store = _store(tmp_path)
    spoil, why = DAMAGES[kind]
    spoil(store.directory / "step00000002")
    with caplog.at_level(logging.WARNING):
        assert store.latest() == store.directory / "step00000001"
    (line,) = caplog.messages
    assert "step00000002" in line and why in line and "step00000001" in line


def test_without_a_complete_checkpoint_the_run_starts_fresh_with_a_message(tmp_path, caplog):
    store = _store(tmp_path)
    _truncate(store.directory / "step00000002" / "client-rank0.pt")
    _flip(store.directory / "step00000001" / "model" / "states.pt")
    with caplog.at_level(logging.WARNING):
        assert store.latest() is None
    assert len(caplog.messages) == 1 and "starts from step 0" in caplog.messages[0]
    assert "step00000002" in caplog.messages[0] and "step00000001" in caplog.messages[0]


def test_saves_after_a_fallback_prune_the_damaged_checkpoint_and_keep_the_fallback(tmp_path):
    store = _store(tmp_path, keep=2)
    store.save(4, _writer(b"four"), {})  # keeps steps 2 and 4
    _truncate(store.directory / "step00000004" / "client-rank0.pt")
    assert store.latest() == store.directory / "step00000002"
    store.save(3, _writer(b"three"), {})  # the resumed run's next save
    assert sorted(p.name for p in store.directory.glob("step*")) == ["step00000002", "step00000003"]


@pytest.fixture
def sigint_raises():
    """``interrupt_main`` does nothing where SIGINT is ignored (a shell's background job): let it raise."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _interrupt_after_first_close(monkeypatch) -> None:
    """Make the first ``os.close`` interrupt the main thread as it returns, as a producer watch's
    ``interrupt_main`` may: ``shutil.rmtree`` then closes that directory descriptor a second time."""
    close, calls = os.close, []

    def closing(fd: int) -> None:
        close(fd)
        if not calls:
            calls.append(fd)
            _thread.interrupt_main()

    monkeypatch.setattr(os, "close", closing)


def test_an_interrupt_during_a_save_waits_until_it_is_published(tmp_path, monkeypatch, sigint_raises):
    store = _store(tmp_path, keep=1)
    _interrupt_after_first_close(monkeypatch)  # lands while pruning step 1 (its folders are removed by fd)
    with pytest.raises(KeyboardInterrupt):
        store.save(3, _writer(b"three"), {})
    assert store.latest() == store.directory / "step00000003"
    assert sorted(p.name for p in store.directory.glob("step*")) == ["step00000003"]


def test_a_second_interrupt_stops_a_save_at_once(tmp_path, sigint_raises):
    store = _store(tmp_path)

    def hung(folder: Path) -> None:
        _thread.interrupt_main()
        _thread.interrupt_main()  # as a second Ctrl-C on a save that storage holds up

    with pytest.raises(KeyboardInterrupt):
        store.save(3, hung, {})
    assert store.latest() == store.directory / "step00000002"


# -- whole runs: the resumed run continues the uninterrupted loss curve ---------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Streams and an uninterrupted 8-step run."""
    root = tmp_path_factory.mktemp("checkpoints")
    cfg = debug_config(root / "data", root / "whole", "engine.max_steps=8", "engine.checkpoint_every=3")
    make_streams(cfg)
    train_worker(cfg)
    return root


def _log(run_dir: Path) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(len(rows))), "a step is logged twice or not at all"
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("loss/")} for r in rows}


def _same_curve(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) == list(range(8))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-7), step


RUN_DAMAGES = {
    "flipped bytes": lambda d: _flip(d / "R" / "mp_rank_00_model_states.pt"),
    "truncated file": lambda d: _truncate(d / "client-rank0.pt"),
    "missing folder": shutil.rmtree,
}


@pytest.mark.parametrize("kind", RUN_DAMAGES)
def test_a_run_resumes_from_the_previous_checkpoint_when_the_newest_is_damaged(
    reference, tmp_path, capsys, caplog, kind
):
    cfg = debug_config(reference / "data", tmp_path / "run", "engine.max_steps=6", "engine.checkpoint_every=3")
    train_worker(cfg)  # checkpoints at steps 3 and 6
    RUN_DAMAGES[kind](tmp_path / "run" / "checkpoints" / "step00000006")
    cfg.engine.max_steps = 8
    with caplog.at_level(logging.WARNING, logger="renderloop.trainers.checkpoint"):
        train_worker(cfg)
    assert "resumed simgan at step 3" in capsys.readouterr().out
    assert "step00000006" in caplog.text and "step00000003" in caplog.text
    _same_curve(_log(reference / "whole"), _log(tmp_path / "run"))


def test_a_run_with_no_complete_checkpoint_starts_again_from_step_0(reference, tmp_path, caplog):
    cfg = debug_config(reference / "data", tmp_path / "run", "engine.max_steps=6", "engine.checkpoint_every=3")
    train_worker(cfg)
    for step in (3, 6):
        _truncate(tmp_path / "run" / "checkpoints" / f"step0000000{step}" / "client-rank0.pt")
    cfg.engine.max_steps = 8
    with caplog.at_level(logging.WARNING, logger="renderloop.trainers.checkpoint"):
        train_worker(cfg)
    assert "starts from step 0" in caplog.text
    _same_curve(_log(reference / "whole"), _log(tmp_path / "run"))


def test_a_checkpoint_of_another_architecture_is_refused_in_one_error_naming_both(reference, tmp_path):
    cfg = debug_config(reference / "data", tmp_path / "run", "engine.max_steps=3", "engine.checkpoint_every=3")
    train_worker(cfg)
    trained = (tmp_path / "run" / "method.json").read_text()
    wider = debug_config(reference / "data", tmp_path / "run", "engine.max_steps=6", "method.channels=12")
    assert wider.method_config.channels != cfg.method_config.channels
    with pytest.raises(InputError) as refused:
        train_worker(wider)
    message = str(refused.value)
    assert "holds networks of another architecture than this config builds" in message
    assert f"R stem.weight [{cfg.method_config.channels}, 3, 3, 3] (this config: [12, 3, 3, 3])" in message
    assert f"method.channels {cfg.method_config.channels} (checkpoint) vs 12 (this config)" in message
    assert (tmp_path / "run" / "method.json").read_text() == trained  # the run's record is kept
    cfg.engine.max_steps = 6  # the run's own settings still resume
    train_worker(cfg)
    assert max(_log(tmp_path / "run")) == 5


class _RecordingStore(CheckpointStore):
    released: list[str] = []

    def release(self, path: Path) -> None:
        self.released.append(path.name)


def test_the_store_hears_a_restore_is_over_even_when_it_is_refused(reference, tmp_path):
    """A store that copied a checkpoint to restore it (Ray's) may drop the copy, whatever came of it."""
    cfg = debug_config(reference / "data", tmp_path / "run", "engine.max_steps=3", "engine.checkpoint_every=3")
    train_worker(cfg)
    wider = debug_config(reference / "data", tmp_path / "run", "engine.max_steps=6", "method.channels=12")
    store = _RecordingStore(tmp_path / "run" / "checkpoints", 3, ALONE)
    with pytest.raises(InputError):
        train_worker(wider, checkpoints=store)
    assert store.released == ["step00000003"]
