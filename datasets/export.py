"""``renderloop export storage.stream=NAME out=DIR``: a stream as plain per-sample WebDataset tars.

Producers write chunks (format version 2) for training speed; people and third-party tools
(``webdataset``, ``tarfile``, Ray Data) expect one file per field. This rewrites every intact
shard the ledger lists, of either format, as ``DIR/NAME-000000.tar``, ... with members
``<key>.<field>`` (PNG images, NPY arrays, JSON: ``schema.encode_sample``'s bytes), in ledger
order, ``samples_per_shard`` samples each.

Shards are read as the streaming reader reads them: each is checked against its ledger checksum
before any of its samples is used; missing, corrupt or truncated shards and unreadable ledger
files are skipped and counted, duplicate ledger entries ignored (and a sample whose key an earlier
one had is passed over and counted: WebDataset would merge the two), and a format this renderloop does
not know stops the export. A stream still being written is exported as its ledger lists it when
the export starts. Each tar is written under a temporary name, synced and renamed, so an
interrupted export leaves only complete tars (and, if killed, ``*.tar.tmp`` files the next export
of the stream removes); ``DIR/NAME-export.json`` is written last and so marks a finished export.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tarfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from renderloop.config import ConfigError, check_output_file
from renderloop.errors import InputError

from .chunks import ShardFormatError
from .ledger import SHARD_FORMATS, Ledger, LedgerEntry
from .reader import check_shard, iter_tar_samples
from .schema import FIELDS
from .storage import Storage, StorageConfig, StorageError, check_root
from .tar import TarStream

__all__ = ["ExportConfig", "export"]

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    storage: StorageConfig = field(default_factory=lambda: StorageConfig(stream="???"))
    """``storage.root`` and ``storage.stream`` name the stream to export (``record`` is unused). The
    stream has no default ("???" is OmegaConf's missing value): exporting some other stream by
    accident would only be noticed in the tars."""
    out: str = "???"
    """Folder (local path or fsspec URL) that receives ``<stream>-NNNNNN.tar`` and ``<stream>-export.json``."""
    samples_per_shard: int = 256
    """Samples per exported tar (the last one may hold fewer)."""
    fields: list[str] | None = None
    """Write only these schema fields (``__key__`` always); None writes every field a sample has."""
    verify: bool = True
    """Check each shard against its ledger checksum before using it, as the reader does. Off, a
    shard is still refused when its tar or chunks are damaged, but flipped payload bytes pass."""
    overwrite: bool = False
    """Allow an ``out`` that already holds tars: this stream's earlier export is replaced (tars of
    other names are left alone). Off, such an ``out`` is refused, so no export mixes with another."""

    def __post_init__(self) -> None:
        check_root("out", self.out)
        out = Storage(self.out)
        if out.is_local:  # a folder that refuses new files is found before any shard is read
            check_output_file("out", out.path(summary_name(self.storage.stream)), (".json",))
        if self.samples_per_shard < 1:
            raise ConfigError(
                "samples_per_shard", f"must be >= 1 (samples per exported tar); got {self.samples_per_shard}"
            )
        if self.fields is not None:
            if not self.fields:
                raise ConfigError("fields", "must name at least one field, or be null for every field; got []")
            if unknown := [name for name in self.fields if name not in FIELDS]:
                raise ConfigError("fields", f"unknown field {unknown[0]!r}; known fields: {', '.join(FIELDS)}")


def tar_name(stream: str, index: int) -> str:
    return f"{stream}-{index:06d}.tar"


def summary_name(stream: str) -> str:
    return f"{stream}-export.json"


@dataclass
class _Report:
    """What reading the stream found, and what was written."""

    listed: int = 0
    read: int = 0
    missing: list[str] = field(default_factory=list)
    """Listed shards whose files are gone (``renderloop run`` deletes consumed ones)."""
    damaged: dict[str, str] = field(default_factory=dict)
    """Shards that failed their checksum or did not parse, and why."""
    unreadable: dict[str, str] = field(default_factory=dict)
    """Ledger files that could not be parsed (their shards are unknown), and why."""
    duplicate_entries: int = 0
    duplicate_keys: int = 0
    """Samples passed over because an earlier one had their key (WebDataset would merge them)."""
    samples: int = 0
    fields: set[str] = field(default_factory=set)
    tars: list[str] = field(default_factory=list)


def _refuse(cfg: ExportConfig, storage: Storage, out: Storage) -> None:
    """The checks that look at storage, done before any shard is read or any file written."""
    stream = cfg.storage.stream
    if not storage.exists(f"{stream}/ledger"):
        there = ", ".join(n for n in storage.list("") if storage.exists(f"{n}/ledger")) or "none"
        raise ConfigError("storage.stream", f"no such stream under {storage.url('')} (it has: {there}); got {stream!r}")
    tars = [name for name in out.list("") if name.endswith(".tar")]
    if tars and not cfg.overwrite:
        shown = ", ".join(tars[:3]) + (f" and {len(tars) - 3} more" if len(tars) > 3 else "")
        raise ConfigError(
            "out", f"already holds tars ({shown}); give an empty folder, or overwrite=true; got {cfg.out!r}"
        )


def _read(storage: Storage, ledger: Ledger, entry: LedgerEntry, verify: bool, report: _Report) -> list[Mapping]:
    """The shard's per-sample records; none, counted, if it is missing or damaged."""
    try:
        data = storage.read_bytes(ledger.rel("shards", entry.shard))
    except FileNotFoundError:  # deleted since the listing (a reader consumed it)
        report.missing.append(entry.shard)
        return []
    try:
        raws = check_shard(data, entry) if verify else list(iter_tar_samples(data))
    except ShardFormatError:
        raise
    except (OSError, ValueError, tarfile.TarError) as err:
        report.damaged[entry.shard] = str(err)
        log.warning("export: skipping shard %s of stream %s: %s", entry.shard, ledger.stream, err)
        return []
    report.read += 1
    return raws


class _TarWriter:
    """Per-sample tars of ``per_tar`` samples, each written under a temporary name and renamed
    once complete, so a reader of ``out`` never sees a partial tar."""

    def __init__(self, out: Storage, stream: str, per_tar: int) -> None:
        self.out, self.stream, self.per_tar = out, stream, per_tar
        self.written: list[str] = []
        self._open: dict | None = None

    def add(self, key: str, record: Mapping[str, bytes], names: list[str]) -> None:
        if self._open is None:
            name = tar_name(self.stream, len(self.written))
            tmp = f"{name.removesuffix('.tar')}.{os.getpid()}_{uuid.uuid4().hex[:8]}.tar.tmp"
            raw = self.out.open_write(tmp)
            self._open = {"name": name, "tmp": tmp, "raw": raw, "tar": TarStream(raw), "count": 0}
        s = self._open
        for name in names:
            s["tar"].add(f"{key}.{name}", [record[name]])
        s["count"] += 1
        if s["count"] >= self.per_tar:
            self.close()

    def close(self) -> None:
        """Finish the tar in progress, if any: end blocks, sync, rename to its final name."""
        s, self._open = self._open, None
        if s is None:
            return
        s["tar"].close()
        self.out.sync_close(s["raw"])
        self.out.rename(s["tmp"], s["name"])
        self.written.append(s["name"])

    def abort(self) -> None:
        """Drop the tar in progress (after an error); the complete ones stay."""
        s, self._open = self._open, None
        if s is not None:
            with contextlib.suppress(Exception):
                s["raw"].close()
            with contextlib.suppress(Exception):
                self.out.remove(s["tmp"])


def _own_files(out: Storage, stream: str) -> tuple[dict[int, str], list[str]]:
    """This stream's exported tars in ``out`` by index, and its leftover temporary tars."""
    pattern = re.compile(rf"{re.escape(stream)}-(\d{{6}})(\.tar|\..+\.tar\.tmp)")
    tars, tmps = {}, []
    for name in out.list(""):
        if match := pattern.fullmatch(name):
            if match[2] == ".tar":
                tars[int(match[1])] = name
            else:
                tmps.append(name)
    return tars, tmps


def export(cfg: ExportConfig) -> dict:
    """Export the stream; returns the summary also written to ``<out>/<stream>-export.json``.

    Raises:
        ConfigError: no such stream, or ``out`` holds tars (without ``overwrite``); before any work.
        InputError: the stream has no intact sample, or lacks a field ``fields`` names (found on
            the first intact shard, before anything is written).
        ShardFormatError: a shard in a format this renderloop does not know.
        StorageError: ``out`` refused a write (the tars completed before it stay).
    """
    start = time.monotonic()
    stream = cfg.storage.stream
    storage, out = Storage(cfg.storage.root), Storage(cfg.out)
    _refuse(cfg, storage, out)
    ledger = Ledger(storage, stream)
    entries = ledger.entries()
    if unknown := [e for e in entries if e.format not in SHARD_FORMATS]:
        raise ShardFormatError(
            f"shard {unknown[0].shard}: its ledger entry says format version {unknown[0].format}; this "
            f"renderloop reads {sorted(SHARD_FORMATS)}: update renderloop to export it"
        )
    report = _Report(listed=len(entries), unreadable=dict(ledger.unreadable), duplicate_entries=len(ledger.duplicates))
    on_disk = set(storage.list(ledger.rel("shards")))
    report.missing = [e.shard for e in entries if e.shard not in on_disk]
    for name in _own_files(out, stream)[1]:  # left by a killed export: never renamed, never complete
        out.remove(name)
    writer = _TarWriter(out, stream, cfg.samples_per_shard)
    wanted = None if cfg.fields is None else list(dict.fromkeys(cfg.fields))
    seen: set[str] = set()
    try:
        for entry in entries:
            if entry.shard not in on_disk:
                continue
            raws = _read(storage, ledger, entry, cfg.verify, report)
            if raws and wanted is not None and not writer.written and not seen:
                _check_fields(raws[0], wanted, stream, entry.shard)
            for raw in raws:
                key = raw["__key__"]
                if key in seen:
                    report.duplicate_keys += 1
                    continue
                seen.add(key)
                names = wanted if wanted is not None else sorted(k for k in raw if not k.startswith("__"))
                names = [n for n in names if n in raw]
                writer.add(key, raw, names)
                report.fields.update(names)
                report.samples += 1
        writer.close()
    except OSError as err:  # reads that fail skip their shard (``_read``): this is ``out`` refusing a write
        writer.abort()
        raise StorageError(
            f"export of stream {stream!r} into {out.url('')} stopped: storage refused a write ({err}); "
            f"{len(writer.written)} complete tar{'s' * (len(writer.written) != 1)} kept, no partial one"
        ) from err
    except BaseException:
        writer.abort()
        raise
    report.tars = writer.written
    if not report.samples:
        raise InputError(
            f"stream {stream!r} under {storage.url('')} has no intact sample to export: {report.listed} shards "
            f"listed, {len(report.missing)} missing, {len(report.damaged)} damaged"
        )
    if cfg.overwrite:  # tars of an earlier, longer export of the stream would otherwise stay behind
        for index, name in _own_files(out, stream)[0].items():
            if index >= len(writer.written):
                out.remove(name)
    summary = _summary(cfg, storage, out, report, time.monotonic() - start)
    out.write_atomic(summary_name(stream), json.dumps(summary, indent=1).encode())
    return summary


def _check_fields(raw: Mapping, wanted: list[str], stream: str, shard: str) -> None:
    if missing := [name for name in wanted if name not in raw]:
        has = ", ".join(sorted(k for k in raw if not k.startswith("__")))
        raise InputError(
            f"stream {stream!r} has no field {missing[0]!r} (shard {shard} holds {has}); "
            "drop it from fields or give fields=null"
        )


def _summary(cfg: ExportConfig, storage: Storage, out: Storage, report: _Report, seconds: float) -> dict:
    """What the export read and wrote (the JSON file beside the tars)."""
    stream = cfg.storage.stream
    skipped = len(report.missing) + len(report.damaged) + len(report.unreadable)
    last = len(report.tars) - 1
    return {
        "stream": stream,
        "source": storage.url(stream),
        "out": out.url(""),
        "tars": report.tars,
        "url": out.url(f"{stream}-{{000000..{last:06d}}}.tar") if last > 0 else out.url(report.tars[0]),
        "samples": report.samples,
        "samples_per_shard": cfg.samples_per_shard,
        "fields": sorted(report.fields),
        "shards_listed": report.listed,
        "shards_read": report.read,
        "shards_skipped": skipped,
        "missing": report.missing,
        "damaged": report.damaged,
        "unreadable_ledger_files": report.unreadable,
        "duplicate_ledger_entries": report.duplicate_entries,
        "duplicate_keys": report.duplicate_keys,
        "verified": cfg.verify,
        "seconds": round(seconds, 3),
    }
