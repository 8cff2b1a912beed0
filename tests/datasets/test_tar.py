"""The reader's own tar parser agrees with :mod:`tarfile` and refuses damaged archives."""

from __future__ import annotations

import io
import tarfile

import pytest

from renderloop.datasets.reader import iter_tar_samples
from renderloop.datasets.tar import fast_tar_files as _fast_tar_files
from renderloop.datasets.tar import tar_files as _tar_files

FILES = [("a_000.rgb.png", b"png" * 100), ("a_000.meta.json", b"{}"), ("d/" + "k" * 150 + ".txt", b"x" * 513)]


def _tar(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, content in FILES:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT])
def test_parser_matches_tarfile(fmt):
    if fmt == tarfile.USTAR_FORMAT:  # ustar cannot hold the long name: splits it into prefix/name
        files = FILES[:2]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for name, content in files:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        data, expected = buf.getvalue(), files
    else:
        data, expected = _tar(fmt), FILES
    assert list(_tar_files(data)) == expected  # GNU long names go through tarfile


def test_samples_group_by_key():
    samples = list(iter_tar_samples(_tar(tarfile.PAX_FORMAT)))
    assert samples[0] == {"__key__": "a_000", "rgb.png": b"png" * 100, "meta.json": b"{}"}


def test_damaged_archives_are_refused():
    data = bytearray(_tar(tarfile.PAX_FORMAT))
    with pytest.raises(tarfile.ReadError):
        list(_fast_tar_files(bytes(data[:1500])))  # truncated inside a header
    with pytest.raises(tarfile.ReadError):
        list(_fast_tar_files(bytes(data[:700])))  # truncated inside a member
    data[1030] ^= 0xFF  # inside the second header (the first member has one 512-byte block)
    with pytest.raises(tarfile.TarError):
        list(_fast_tar_files(bytes(data)))


def test_directory_pax_records_do_not_leak_and_gnu_headers_keep_names():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folder = tarfile.TarInfo("d" * 120)
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        info = tarfile.TarInfo("k_000.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    assert list(_fast_tar_files(buf.getvalue())) == [("k_000.txt", b"hi")]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("k_001.txt")
        info.size, info.mtime = 2, 1_700_000_000
        tar.addfile(info, io.BytesIO(b"yo"))
    assert list(_fast_tar_files(buf.getvalue())) == [("k_001.txt", b"yo")]
