"""Writing a file whole or not at all, and hashing a file (harmonixr._files)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from harmonixr._files import TEMP_GLOB, atomic_json, atomic_write, sha256_file, temp_path


def test_bytes_text_and_json_replace_the_file_whole(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    atomic_write(path, b"\x00\xffbytes")
    assert path.read_bytes() == b"\x00\xffbytes"
    atomic_write(path, "Dvořák\n")
    assert path.read_bytes() == "Dvořák\n".encode()
    atomic_json(path, {"b": [1, 2]}, indent=1)
    assert path.read_text() == '{\n "b": [\n  1,\n  2\n ]\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_writer_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"old content")
    seen = []

    def half_then_fail(tmp):
        seen.append(tmp)
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        atomic_write(path, half_then_fail)
    assert seen and seen[0].parent == tmp_path and seen[0] != path
    assert path.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]


def test_a_failed_rename_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "x.txt"

    def refuse(src, dst):
        raise OSError("no rename today")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="no rename today"):
        atomic_write(path, "new")
    assert list(tmp_path.iterdir()) == []


def test_file_and_directory_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def record(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}") if os.path.isdir("/proc") else fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    written = []
    atomic_write(tmp_path / "a.npz", lambda tmp: written.append(tmp) or np.savez(tmp, x=[1]))
    atomic_write(tmp_path / "b.txt", "text")
    assert len(synced) == 4
    if os.path.isdir("/proc"):  # which files: the temporary ones, then the folder
        folder = tmp_path.resolve()
        assert synced[0] == str(folder / written[0].name) and synced[1] == str(folder)
        assert synced[2].startswith(str(folder / ".b.")) and synced[3] == synced[1]


def test_a_callable_writer_gets_a_temporary_name_with_the_target_suffix(tmp_path):
    path = tmp_path / "emb.npz"
    path.write_bytes(b"old")
    names = []

    def save(tmp):
        names.append(tmp.name)
        np.savez(tmp, z=np.arange(6.0).reshape(2, 3), paths=np.array(["a", "b"]))

    atomic_write(path, save)
    # np.savez adds ".npz" to a name without it: the temporary name must already end in it
    assert names[0].startswith(".emb.") and names[0].endswith(".tmp.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npz"]
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["z"], np.arange(6.0).reshape(2, 3))
        assert z["paths"].tolist() == ["a", "b"]


def test_temporary_names_are_unique_hidden_and_matched_by_the_glob(tmp_path):
    path = tmp_path / "model.safetensors"
    names = {temp_path(path).name for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith(".model.") and n.endswith(".tmp.safetensors") for n in names)
    for n in names:
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "notes.tmp.txt").write_bytes(b"")  # not hidden: not ours
    assert {p.name for p in tmp_path.glob(TEMP_GLOB)} == names


def test_the_cache_removes_temporaries_a_killed_writer_left(tmp_path):
    from harmonixr.data.cache import TensorCache

    with TensorCache(tmp_path / "cache", create=True) as cache:
        final = cache.tensor_path("ab" + "0" * 62)
        final.parent.mkdir(parents=True)
        left = temp_path(final)
        left.write_bytes(b"half a tensor")
        cache.write_tensor("cd" + "0" * 62, np.zeros((4, 3), np.uint8))
        assert cache.cleanup_temp() == 1
        assert not left.exists()
        assert [p.name for p in (tmp_path / "cache" / "tensors").rglob("*.npy")] == [
            "cd" + "0" * 62 + ".npy"
        ]


def test_sha256_file_equals_hashlib_over_many_blocks(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (3 << 20) + 12345, np.uint8).tobytes()
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
    with pytest.raises(OSError):
        sha256_file(tmp_path / "missing")
