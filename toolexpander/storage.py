"""The run's storage: one location (`logging.output_dir`) that every process resolves the same way.

A location is an absolute local path (on a cluster: a filesystem every node mounts) or a `pyarrow.fs`
URI (`s3://bucket/run`, `gs://...`, `file:///...`). Actors are given location strings, never Path
objects made on another node, and write the parts they hold themselves:

    with writable(location) as d:   # a local directory; for a URI, a temp one uploaded on exit
        ...write files under d...
    with readable(location) as d:   # a local directory; for a URI, a temp download
        ...read files under d...

A plain local path is written and read in place (no copies); every URI, file:// included, goes through
a local staging directory, as an object store needs.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator


class StorageError(RuntimeError):
    pass


def is_uri(location: str) -> bool:
    return "://" in str(location)


def join(location: str, *parts: str) -> str:
    """A child location: URIs join with '/', paths as paths."""
    if is_uri(location):
        return "/".join([str(location).rstrip("/"), *parts])
    return str(Path(location, *parts))


def resolve(location: str) -> str:
    """A location every process reads the same way: URIs as given, paths made absolute here (the
    driver: before any actor sees them)."""
    if is_uri(location):
        Store(location)  # an unknown scheme or a malformed URI fails here, at the driver
        return str(location).rstrip("/")
    return str(Path(location).expanduser().resolve())


@lru_cache(maxsize=256)
def _from_uri(uri: str):
    """pyarrow's (filesystem, path) for a URI, once per URI string per process: opening an s3:// or
    gs:// filesystem asks the bucket's region over the network, and a checkpoint opens the same few
    locations many times. A failure is not cached (lru_cache keeps only returned values)."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


class Store:
    """A location as a `pyarrow.fs` filesystem and a base path in it; `rel` arguments are
    '/'-separated paths under the base."""

    def __init__(self, location: str):
        import pyarrow.fs as pafs

        self.location = str(location)
        if is_uri(location):
            try:
                self.fs, self.base = _from_uri(self.location)
            except Exception as e:  # pyarrow raises ArrowInvalid / ArrowNotImplementedError / OSError
                raise StorageError(f"logging.output_dir: cannot open {self.location!r}: {e}") from e
        else:
            self.fs, self.base = pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())
        self.base = self.base.rstrip("/")
        # A plain path is written in place and renamed into place; a URI (file:// included, so that
        # tests run the object-store path) through staging copies, with no directory renames.
        self.local = not is_uri(self.location)

    def path(self, rel: str = "") -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def _info(self, rel: str):
        return self.fs.get_file_info(self.path(rel))

    def is_file(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self._info(rel).type == pafs.FileType.File

    def is_dir(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self._info(rel).type == pafs.FileType.Directory

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def write_bytes(self, rel: str, data: bytes) -> None:
        parent = self.path(rel).rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(self.path(rel)) as f:
            f.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def mkdir(self, rel: str) -> None:
        self.fs.create_dir(self.path(rel), recursive=True)

    def delete_dir(self, rel: str) -> None:
        if self.is_dir(rel):
            self.fs.delete_dir(self.path(rel))

    def move(self, src: str, dst: str) -> None:
        self.fs.move(self.path(src), self.path(dst))

    def dirs(self, rel: str, prefix: str = "") -> list[str]:
        """Names of the directories directly under rel that start with prefix."""
        import pyarrow.fs as pafs

        if not self.is_dir(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=False))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory
                      and i.base_name.startswith(prefix))

    def files(self, rel: str) -> dict[str, int]:
        """Every file under rel, as {path relative to rel: size in bytes}."""
        import pyarrow.fs as pafs

        if not self.is_dir(rel):
            return {}
        root = self.path(rel)
        infos = self.fs.get_file_info(pafs.FileSelector(root, recursive=True))
        return {i.path[len(root) + 1:]: i.size for i in sorted(infos, key=lambda i: i.path)
                if i.type == pafs.FileType.File}

    def upload(self, local_dir: str | Path, rel: str) -> None:
        """Copy every file under local_dir to rel (merged with what is there)."""
        import pyarrow.fs as pafs

        self.mkdir(rel)
        pafs.copy_files(str(Path(local_dir).resolve()), self.path(rel), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)

    def download(self, rel: str, local_dir: str | Path) -> None:
        import pyarrow.fs as pafs

        if not self.is_dir(rel):
            raise StorageError(f"{join(self.location, rel)}: no such directory")
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path(rel), str(Path(local_dir).resolve()), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())


def _split(location: str) -> tuple[Store, str]:
    """The store of a location's parent and the location's name in it (so that Store.path(name) is it)."""
    if is_uri(location):
        parent, _, name = str(location).rstrip("/").rpartition("/")
        return Store(parent), name
    path = Path(location)
    return Store(str(path.parent)), path.name


def read_file(location: str) -> bytes:
    store, name = _split(location)
    if not store.is_file(name):
        raise StorageError(f"{location}: no such file")
    return store.read_bytes(name)


def write_file(location: str, data: bytes) -> None:
    store, name = _split(location)
    store.write_bytes(name, data)


def exists(location: str) -> bool:
    store, name = _split(location)
    return store.is_file(name) or store.is_dir(name)


@contextmanager
def writable(location: str) -> Iterator[Path]:
    """A local directory whose files end up at `location`: the location itself when local, else a
    temp directory uploaded (merged into the location) when the block exits without an exception."""
    store, name = _split(location)
    if store.local:
        path = Path(store.path(name))
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="toolexpander-up-"))
    try:
        yield tmp
        store.upload(tmp, name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def readable(location: str) -> Iterator[Path]:
    """A local directory with the files at `location`: the location itself when local, else a temp
    download, removed when the block exits."""
    store, name = _split(location)
    if store.local:
        path = Path(store.path(name))
        if not path.is_dir():
            raise StorageError(f"{location}: no such directory")
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="toolexpander-down-"))
    try:
        store.download(name, tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
