"""The one atomic writer, image lister and git helper (varicodec.util)."""

import os
import stat
import sys

import pytest

from varicodec.util import (
    atomic_write,
    git_commit,
    is_image_name,
    list_images,
    remove_unfinished_writes,
    retain_freed_memory,
    trim_freed_memory,
)


def test_atomic_write_gives_the_umask_mode(tmp_path):
    import torch
    from safetensors.torch import save_file

    old = os.umask(0o027)
    try:
        path = atomic_write(tmp_path / "a.bin", lambda tmp: tmp.write_bytes(b"x"))
        # safetensors replaces the file with a 0600 one of its own
        st = atomic_write(tmp_path / "w.safetensors",
                          lambda tmp: save_file({"t": torch.zeros(2)}, tmp))
    finally:
        os.umask(old)
    assert path.read_bytes() == b"x"
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(st.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "w.safetensors"]


def test_atomic_write_leaves_no_partial_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"old")

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "a.bin", fail)
    assert (tmp_path / "a.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_unfinished_writes_can_be_removed_from_outside(tmp_path):
    """What an exit without ``finally`` (Ctrl-C during an import) calls first."""
    (tmp_path / "a.bin").write_bytes(b"old")
    seen = []

    def write(tmp):
        tmp.write_bytes(b"half")
        remove_unfinished_writes()
        seen.append(tmp.exists())
        raise OSError("the process would have ended here")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "a.bin", write)
    atomic_write(tmp_path / "b.bin", lambda tmp: tmp.write_bytes(b"new"))
    remove_unfinished_writes()  # a finished write is not touched
    assert seen == [False]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {"a.bin": b"old",
                                                                   "b.bin": b"new"}


def test_one_image_lister(tmp_path):
    for name in ("b.PNG", "a.jpg", ".hidden.png", "notes.txt", "x.vcd"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    assert [p.name for p in list_images(tmp_path, (".vcd",))] == ["x.vcd"]
    assert is_image_name("photo.TIFF") and not is_image_name(".photo.png")
    with pytest.raises(FileNotFoundError, match="no such dataset folder"):
        list_images(tmp_path / "missing", what="dataset folder")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        list_images(tmp_path / "a.jpg")


def test_git_commit_is_a_hash_or_none():
    commit = git_commit()
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)
    short = git_commit(short=True)
    assert short is None or commit.startswith(short)


def test_retain_and_trim_freed_memory_take_on_glibc():
    import platform

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert retain_freed_memory() is glibc
    assert trim_freed_memory() is glibc
