"""The run's storage (toolexpander/storage.py): plain paths in place, URIs through staging copies;
file:// and a bucket (s3://, a local S3 endpoint: tests/conftest.py s3)."""

import pytest

from toolexpander import storage
from toolexpander.config import ConfigError, load_config


@pytest.fixture(params=["path", "uri", "s3"])
def location(request, tmp_path):
    if request.param == "s3":
        return storage.join(request.getfixturevalue("s3"), tmp_path.name, "run")   # a fresh prefix per test
    return str(tmp_path / "run") if request.param == "path" else f"file://{tmp_path}/run"


def test_parts_written_and_read_back(location, tmp_path):
    with storage.writable(storage.join(location, "part", "a")) as d:
        (d / "x.bin").write_bytes(b"12345")
        (d / "sub").mkdir()
        (d / "sub" / "y.txt").write_text("y")
        staged = d
    with storage.writable(storage.join(location, "part", "a")) as d:   # a second writer merges
        (d / "z.txt").write_text("z")
    storage.write_file(storage.join(location, "state.npz"), b"abc")
    assert storage.Store(location).files("part") == {"a/sub/y.txt": 1, "a/x.bin": 5, "a/z.txt": 1}
    assert storage.read_file(storage.join(location, "part", "a", "sub", "y.txt")) == b"y"
    assert storage.read_file(storage.join(location, "state.npz")) == b"abc"
    assert storage.exists(storage.join(location, "part")) and not storage.exists(storage.join(location, "nope"))
    with storage.readable(storage.join(location, "part", "a")) as d:
        assert (d / "sub" / "y.txt").read_text() == "y"
        read_at = d
    if storage.is_uri(location):   # staged copies, removed afterwards
        assert staged != tmp_path / "run" / "part" / "a" and not staged.exists() and not read_at.exists()
    else:                                # in place
        assert staged == read_at == tmp_path / "run" / "part" / "a"


def test_a_failed_writer_uploads_nothing(tmp_path):
    uri = f"file://{tmp_path}/run"
    with pytest.raises(RuntimeError, match="boom"), storage.writable(storage.join(uri, "part")) as d:
        (d / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert not (tmp_path / "run" / "part").exists()


def test_missing_things_and_bad_uris_are_named(tmp_path):
    with pytest.raises(storage.StorageError, match=r"run/none\.npz: no such file"):
        storage.read_file(f"file://{tmp_path}/run/none.npz")
    with pytest.raises(storage.StorageError, match=r"run/ckpt: no such directory"):
        with storage.readable(f"file://{tmp_path}/run/ckpt"):
            pass
    with pytest.raises(storage.StorageError, match=r"logging\.output_dir: cannot open 'nosuch://bucket/run'"):
        storage.resolve("nosuch://bucket/run")
    assert storage.resolve("file:///a/b/") == "file:///a/b"
    assert storage.resolve("runs/x").endswith("/runs/x") and storage.resolve("runs/x").startswith("/")
    with pytest.raises(ConfigError, match=r"config file not readable: file://.*/config\.json"):
        load_config(f"file://{tmp_path}/config.json")


def test_a_config_is_read_from_a_uri(tmp_path):
    (tmp_path / "config.json").write_text('{"train": {"steps": 7}}')
    assert load_config(f"file://{tmp_path}/config.json").train.steps == 7


def test_a_uri_opens_its_filesystem_once_per_process(tmp_path):
    storage._from_uri.cache_clear()
    uri = f"file://{tmp_path}/run"
    for _ in range(3):   # what a checkpoint does: the same locations again and again
        storage.write_file(storage.join(uri, "step_1", "a.txt"), b"a")
        assert storage.read_file(storage.join(uri, "step_1", "a.txt")) == b"a"
    assert storage.Store(uri).fs is storage.Store(uri).fs
    info = storage._from_uri.cache_info()
    assert (info.misses, info.currsize) == (2, 2)     # pyarrow opened f"{uri}/step_1" and uri, once each
    for _ in range(2):   # a failure is not cached: the next call tries again
        with pytest.raises(storage.StorageError, match="cannot open"):
            storage.Store("nosuchscheme://x/y")
    info = storage._from_uri.cache_info()
    assert (info.misses, info.currsize) == (4, 2)
