"""Atomic file writes: the whole new file or the old one, with a new file's permissions."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lightning_gsf.atomic_files import atomic_file
from lightning_gsf.callbacks import AtomicCheckpointIO
from lightning_gsf.data.sources import write_frame_count_cache


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=lambda umask: f"umask{umask:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_get_the_permissions_of_a_new_file(tmp_path: Path, umask: int) -> None:
    """(A temporary file is owner-only, 0o600: checkpoints were unreadable by collaborators.)"""
    (tmp_path / "plain").write_text("x")
    expected = _mode(tmp_path / "plain")
    assert expected == 0o666 & ~umask
    with atomic_file(tmp_path / "a.bin") as file:
        file.write(b"data")
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "last.ckpt")
    write_frame_count_cache(tmp_path / "frame_counts.csv", {"video": 12})
    for name in ("a.bin", "last.ckpt", "frame_counts.csv"):
        assert _mode(tmp_path / name) == expected, name
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"epoch": 1}


@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt], ids=["error", "ctrl_c"])
def test_an_error_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path: Path, stop: type[BaseException]) -> None:
    target = tmp_path / "counts.csv"
    target.write_text("old")
    with pytest.raises(stop, match="stopped"), atomic_file(target, "w", newline="") as file:
        file.write("half")
        raise stop("stopped")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["counts.csv"]


@pytest.mark.parametrize("durable", [False, True])
def test_the_temporary_file_is_beside_the_target_and_durable_writes_are_synced(tmp_path: Path, monkeypatch,
                                                                              durable: bool) -> None:
    """Beside the target, so that the rename stays on one filesystem (a $TMPDIR elsewhere would
    make it a copy, or fail with EXDEV); with ``durable``, the data and then the folder synced."""
    renamed, synced = [], []
    replace, fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "replace", lambda source, target: renamed.append((Path(source), Path(target)))
                        or replace(source, target))
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or fsync(fd))
    target = tmp_path / "folder" / "last.ckpt"
    with atomic_file(target, durable=durable) as file:
        file.write(b"data")
    ((source, destination),) = renamed
    assert destination == target and source.parent == target.parent and source.name.startswith(".last.ckpt.")
    assert synced == ([str(source), str(target.parent)] if durable else [])


def test_text_mode_and_folders_made_on_the_way(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "rows.tsv"
    with atomic_file(target, "w", newline="", durable=True) as file:
        file.write("a\tb\r\n")
    assert target.read_bytes() == b"a\tb\r\n"


def test_checkpoints_are_synced_to_disk(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint is fsynced, and so is its folder after the rename: a power cut does not
    leave a renamed but empty ``last.ckpt``."""
    synced, fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or fsync(fd))
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "last.ckpt")
    assert len(synced) == 2 and synced[1] == str(tmp_path)


def test_durable_writes_reach_the_file_before_it_is_synced(tmp_path: Path, monkeypatch) -> None:
    """fsync of a file whose data still sits in Python's buffer syncs an empty file."""
    sizes, fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: sizes.append(os.fstat(fd).st_size) or fsync(fd))
    with atomic_file(tmp_path / "last.ckpt", durable=True) as file:
        file.write(b"data")
    assert sizes[0] == 4
