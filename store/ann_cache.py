"""One built HNSW or IVF index per key, shared by the API worker processes of a machine through
files.

Building the HNSW graph of a catalogue is the slow part of a serving process's start-up (9 s
a space at 100k items on 2 cores; from 500k items an IVF index is built instead, 10 s at 1M);
reading it back is under a second. An
:class:`IndexCache` keeps one published index per key (the query service keys it by the
embedding version and the index settings) in a directory: the first process to need it builds
it under an exclusive file lock and publishes it atomically, the others wait on the lock and
read it back, memory-mapped (``faiss.IO_FLAG_MMAP_IFC``), so the graph and its vectors are
page-cache pages that every worker shares instead of one private copy each.

Files of a key ``K``: ``K.faiss`` (``faiss.write_index``), ``K.labels.npy`` (the caller's id
of each index row, e.g. the item of each row), ``K.json`` (the metadata with the SHA-256 of
the two, written last: the entry exists once it does), ``K.lock``. An entry whose metadata,
checksums or shape do not match is logged and rebuilt, never served; an entry built over
other vectors than the caller's is reused only for the rows that match (:meth:`IndexCache.
get_or_build`). Files are replaced by rename, so a process that mapped an older entry keeps
reading it intact. Needs POSIX file locks (``fcntl``: Linux, macOS).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from store.ann import BuiltIndex, ItemIndex

log = logging.getLogger(__name__)

#: Version of the file layout; an entry of another format is rebuilt (2: IVF entries hold
#: fast-scan codes with an exact re-rank, no longer ``IndexIVFFlat``).
FORMAT = 2


@dataclass(frozen=True)
class CachedIndex:
    """A published entry read back: the graph (memory-mapped) and its row labels ``[I]``."""

    built: BuiltIndex
    labels: np.ndarray


class IndexCache:
    """A directory of built HNSW or IVF indexes, one per key, shared between processes.

    Args:
        directory: where the entries live (created if missing); one per machine (the files
            are memory-mapped, so a network file system gains nothing).
        keep: entries kept when one is published, the newest by modification time, so the
            previous version's stays for a quick roll-back (default: 2).

    >>> import tempfile
    >>> cache = IndexCache(tempfile.mkdtemp())
    >>> cache.load("v1-missing") is None
    True
    """

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 2) -> None:
        try:
            import fcntl  # noqa: F401  (POSIX only)
        except ImportError:
            raise RuntimeError("the shared index cache needs POSIX file locks (fcntl), which "
                               "this platform lacks: serve without an index cache") from None
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.builds = 0  # indexes this process built in get_or_build
        self.loads = 0  # and read back instead

    def __repr__(self) -> str:
        return f"IndexCache({str(self.directory)!r}, keep={self.keep})"

    def _path(self, key: str, suffix: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"a cache key is a plain file name stem, got {key!r}")
        return self.directory / f"{key}{suffix}"

    @contextmanager
    def _locked(self, key: str, *, exclusive: bool) -> Iterator[None]:
        import fcntl

        with open(self._path(key, ".lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def load(self, key: str) -> CachedIndex | None:
        """The published entry of ``key``, memory-mapped; None when there is none or it does
        not verify (logged). Waits while another process builds or publishes it."""
        with self._locked(key, exclusive=False):
            return self._read(key)

    def _read(self, key: str) -> CachedIndex | None:
        meta_path = self._path(key, ".json")
        if not meta_path.exists():
            return None
        try:
            return self._verified(key, json.loads(meta_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            # RuntimeError: FAISS cannot parse the file; rebuilt, never served
            log.warning("the cached index %s is unusable (%s); it will be rebuilt",
                        meta_path, exc)
            return None

    def _verified(self, key: str, meta: dict[str, Any]) -> CachedIndex:
        import faiss

        if meta.get("format") != FORMAT or meta.get("key") != key:
            raise ValueError(f"format {meta.get('format')} of key {meta.get('key')!r}, "
                             f"expected format {FORMAT} of key {key!r}")
        index_path, labels_path = self._path(key, ".faiss"), self._path(key, ".labels.npy")
        for path, want in ((index_path, meta["faiss_sha256"]),
                           (labels_path, meta["labels_sha256"])):
            if _sha256(path) != want:
                raise ValueError(f"checksum of {path.name} does not match its metadata")
        labels = np.load(labels_path, allow_pickle=False)
        index = faiss.read_index(str(index_path),
                                 faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        built = BuiltIndex(index, str(meta["space"]),
                           float(meta["build_recall"]),
                           {str(k): float(v) for k, v in meta["probe_recalls"].items()})
        if labels.shape != (built.index.ntotal,) or built.index.ntotal != meta["rows"]:
            raise ValueError(f"{meta['rows']} rows in the metadata, {built.index.ntotal} in "
                             f"the index, {labels.shape} labels")
        return CachedIndex(built, labels.astype(np.int64, copy=False))

    def _write(self, key: str, built: BuiltIndex, labels: np.ndarray) -> None:
        import faiss

        labels = np.asarray(labels, np.int64)
        if labels.shape != (built.index.ntotal,):
            raise ValueError(f"labels must be [{built.index.ntotal}], got {labels.shape}")
        for orphan in self.directory.glob(f".{key}.*.tmp"):  # of a writer that was killed
            orphan.unlink(missing_ok=True)
        final = {s: self._path(key, s) for s in (".faiss", ".labels.npy", ".json")}
        tmp = {s: p.with_name(f".{p.name}.{os.getpid()}.tmp") for s, p in final.items()}
        try:
            faiss.write_index(built.index, str(tmp[".faiss"]))
            with open(tmp[".labels.npy"], "wb") as f:
                np.save(f, labels, allow_pickle=False)
            meta = {"format": FORMAT, "key": key, "rows": int(built.index.ntotal),
                    "dim": int(built.index.d), "space": built.space,
                    "build_recall": built.build_recall, "probe_recalls": built.probe_recalls,
                    "faiss_sha256": _sha256(tmp[".faiss"]),
                    "labels_sha256": _sha256(tmp[".labels.npy"]), "written_at": time.time()}
            tmp[".json"].write_text(json.dumps(meta, indent=1))
            for path in tmp.values():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())  # on disk before the rename makes it the entry
            final[".json"].unlink(missing_ok=True)  # no entry while its files are swapped
            os.replace(tmp[".faiss"], final[".faiss"])
            os.replace(tmp[".labels.npy"], final[".labels.npy"])
            os.replace(tmp[".json"], final[".json"])  # the commit point
        finally:
            for path in tmp.values():
                path.unlink(missing_ok=True)

    def _prune(self, *, keep: str) -> None:
        """Delete all but the newest :attr:`keep` entries (never ``keep``, never one that
        another process holds locked). Lock files stay: removing one could let two processes
        lock two files of the same key."""
        import fcntl

        entries = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime,
                         reverse=True)
        others = [p.name[: -len(".json")] for p in entries if p.name != f"{keep}.json"]
        for key in others[self.keep - 1:]:
            with open(self._path(key, ".lock"), "a+b") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being read or built right now: next time
                for suffix in (".json", ".faiss", ".labels.npy"):
                    self._path(key, suffix).unlink(missing_ok=True)
                fcntl.flock(lock, fcntl.LOCK_UN)
            log.info("pruned the cached index %s", key)

    def get_or_build(
        self,
        key: str,
        items: np.ndarray,
        labels: np.ndarray,
        build: Callable[[], ItemIndex],
        *,
        max_fresh_share: float = 0.025,
        build_if_ahead: bool = True,
        **index_kwargs: Any,
    ) -> tuple[ItemIndex, np.ndarray] | None:
        """An index over ``items`` ``[n, dim]`` (row ``r`` labelled ``labels[r]``, unique),
        read from the entry of ``key`` when it fits, else built by ``build()`` and published.

        The entry fits when it labels no row that ``labels`` lacks and at most
        ``max_fresh_share`` (default: 0.025) of the rows are new or hold other vectors: those
        are scored exactly with the caller's vectors (:meth:`ItemIndex.updated`), so the
        answers are those of the index that built the entry, updated to ``items``. Only one
        process builds a key at a time; the others wait and then read its entry.

        Args:
            build: builds the index over ``items`` in the order of ``labels``.
            build_if_ahead: when the entry labels rows that ``labels`` lacks (it was built
                from newer data than the caller's), build anyway; False: return None, so
                the caller can reload its data and ask again (default: True).
            index_kwargs: :class:`ItemIndex` settings of a read-back index (ef_search ...).
        Returns:
            ``(index, index_labels)``: the label of each index row (the entry's rows first,
            then new ones), or None (see ``build_if_ahead``).
        """
        fitted = self._fit(self.load(key), items, labels, max_fresh_share, index_kwargs)
        if fitted is None or (fitted == "ahead" and build_if_ahead):
            with self._locked(key, exclusive=True):  # one builder; the others wait here
                fitted = self._fit(self._read(key), items, labels, max_fresh_share,
                                   index_kwargs)  # built while this one waited?
                if fitted is None or (fitted == "ahead" and build_if_ahead):
                    return self._build(key, labels, build)
        if isinstance(fitted, str):
            return None
        self.loads += 1
        return fitted

    def _build(self, key: str, labels: np.ndarray, build: Callable[[], ItemIndex]
               ) -> tuple[ItemIndex, np.ndarray]:
        """Build, publish (the caller holds the exclusive lock) and prune."""
        started = time.perf_counter()
        index = build()
        self.builds += 1
        built = index.built
        if built is not None:
            self._write(key, built, labels)
            log.info("built and published the index %s in %.1fs: %r", key,
                     time.perf_counter() - started, index)
            self._prune(keep=key)
        return index, np.asarray(labels, np.int64)

    @staticmethod
    def _fit(entry: CachedIndex | None, items: np.ndarray, labels: np.ndarray,
             max_fresh_share: float, index_kwargs: dict[str, Any]
             ) -> tuple[ItemIndex, np.ndarray] | str | None:
        """The entry updated to ``items``; "ahead" when it has rows ``labels`` lacks; None
        when there is no entry or too many of its rows moved."""
        if entry is None:
            return None
        labels = np.asarray(labels, np.int64)
        order = np.argsort(labels, kind="stable")
        pos = np.minimum(np.searchsorted(labels[order], entry.labels), len(labels) - 1)
        if not len(labels) or not (labels[order][pos] == entry.labels).all():
            return "ahead"
        mine = order[pos]  # caller's row of each entry row
        rest = np.ones(len(labels), bool)
        rest[mine] = False
        new = np.flatnonzero(rest)
        current = np.ascontiguousarray(items[mine], np.float32)
        built_vectors = entry.built.vectors()
        if built_vectors.shape != current.shape:
            return None
        moved = np.flatnonzero((built_vectors != current).any(axis=1))
        if len(moved) + len(new) > max_fresh_share * len(labels):
            return None
        index = ItemIndex(current, backend="faiss", built=entry.built, **index_kwargs)
        if len(moved) or len(new):
            index = index.updated(np.concatenate([moved, len(mine) + np.arange(len(new))]),
                                  np.concatenate([current[moved], items[new]]))
        return index, np.concatenate([entry.labels, labels[new]])


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
