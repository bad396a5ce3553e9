"""MilvusIndex: a dense index in a Milvus collection, through pymilvus (``ar2[milvus]``).

One client, two engines: a local path opens milvus-lite (embedded, a file folder on this
machine), an ``http(s)://`` URI a Milvus server or cluster, with the same calls. A collection
holds one row per document: ``id`` (the primary key), ``vector``, ``title`` and ``text``, so a
service reads its titles and snippets from the store and holds no corpus. ar2's manifest is a
collection property (``ar2.manifest``): a collection carries what built it wherever it is
served from.

The name a service searches is an alias. Each build fills a new collection
(``NAME__ar2_<time>``) and then points the alias at it, so searches see the old documents or
the new ones, never half a build; an interrupted build leaves only an unaliased collection,
removed by the next build of that name. A collection or alias that ar2 did not make is never
touched.

Credentials come from the environment only (``MILVUS_TOKEN``, or ``MILVUS_USER`` and
``MILVUS_PASSWORD``): a URI that holds a password is refused, and manifests never record one.

Example:
    >>> import numpy as np, tempfile
    >>> store = tempfile.mkdtemp() + "/demo.db"
    >>> vectors = np.eye(3, dtype=np.float32)
    >>> index = MilvusIndex.build(vectors, ["a", "b", "c"], uri=store, collection="demo")
    >>> index.search(vectors[1:2], k=1)
    [[Hit(doc_id='b', score=1.0)]]
    >>> index.close()
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np

from ar2._io import atomic_dir, atomic_write_json
from ar2._optional import require
from ar2.config import IndexConfig
from ar2.errors import Ar2Error, StoreUnavailable
from ar2.index.base import base_manifest, read_manifest
from ar2.index.factory import choose, ivf_lists, pq_subquantizers
from ar2.types import Doc, Hit

log = logging.getLogger(__name__)

LOCAL_STORE = "milvus.db"
"""The milvus-lite store an index folder holds when no URI is given."""
PROPERTY = "ar2.manifest"
"""The collection property holding ar2's manifest (JSON)."""
ID_BYTES = 512
TEXT_BYTES = 65_535
"""Milvus's VARCHAR limits for the id, and for the title and the text of a document."""
INSERT_ROWS = 1_000
GET_IDS = 1_000
"""Rows inserted, and documents fetched by id, per call."""
METRICS = {"ip": "IP", "l2": "L2"}
CALL_TIMEOUT_S = 10.0
"""How long a search, fetch or update waits for the store (its retries included) before the
service answers 503: pymilvus would otherwise retry a lost server for minutes."""
ENV_TOKEN, ENV_USER, ENV_PASSWORD = "MILVUS_TOKEN", "MILVUS_USER", "MILVUS_PASSWORD"
STORE_FIX = "Fix: start the Milvus server, or check --uri and the network"


class MilvusTarget(NamedTuple):
    """Where an index goes: a milvus-lite path or a server URI (``None``: a milvus-lite store
    inside the index folder), and the collection (alias)."""

    uri: str | None
    collection: str


def index_params(preset: str, n: int, d: int, config: IndexConfig) -> tuple[str, dict[str, Any]]:
    """Milvus's index type and build parameters for an ar2 preset over ``n`` vectors of
    dimension ``d``, sized as the FAISS preset of the same name.

    Example:
        >>> index_params("ivfpq", 10_000, 384, IndexConfig())
        ('IVF_PQ', {'nlist': 256, 'm': 96, 'nbits': 8})
        >>> index_params("hnsw", 10_000, 384, IndexConfig())
        ('HNSW', {'M': 32, 'efConstruction': 128})
    """
    if preset == "flat":
        return "FLAT", {}
    if preset == "ivf":
        return "IVF_FLAT", {"nlist": ivf_lists(n)}
    if preset == "hnsw":
        return "HNSW", {"M": 32, "efConstruction": config.ef_construction}
    if preset == "ivfpq":
        return "IVF_PQ", {"nlist": ivf_lists(n), "m": pq_subquantizers(d), "nbits": 8}
    raise Ar2Error(f"index preset {preset!r} has no Milvus index. Fix: --preset flat, ivf, hnsw, "
                   "ivfpq or auto")  # fmt: skip


LITE_TYPES = ("FLAT", "IVF_FLAT", "HNSW")
"""The index types milvus-lite builds (it reserves IVF_PQ for a later version: a collection
that large would fail when its first segment is indexed)."""


def check_lite(kind: str, uri: str | None) -> None:
    """Refuse an index type that a local (milvus-lite) store cannot build."""
    if kind not in LITE_TYPES and (uri is None or not remote(uri)):
        raise Ar2Error(f"a local milvus-lite store builds no {kind} index (only "
                       f"{', '.join(LITE_TYPES)}). Fix: --preset flat, ivf or hnsw, or a Milvus "
                       "server (--uri http://HOST:19530)")  # fmt: skip


def check_config(config: IndexConfig) -> None:
    """Refuse FAISS-only settings before any encoding."""
    if config.factory is not None:
        raise Ar2Error("--factory is a FAISS factory string; a Milvus index is chosen by "
                       "--preset. Fix: drop --factory, or use --store faiss")  # fmt: skip
    if config.quantize is not None:
        raise Ar2Error("--quantize is not built for --store milvus. Fix: --preset ivfpq "
                       "(Milvus's IVF_PQ codes), or --store faiss")  # fmt: skip


def check_uri(uri: str) -> str:
    """The URI as recorded: refused when it holds credentials, which belong in the
    environment.

    Example:
        >>> check_uri("http://milvus.internal:19530")
        'http://milvus.internal:19530'
        >>> check_uri("http://root:secret@milvus:19530")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ar2.errors.Ar2Error: the Milvus URI holds credentials. Fix: ... MILVUS_TOKEN ...
    """
    if remote(uri) and (urlsplit(uri).username or urlsplit(uri).password):
        raise Ar2Error(
            "the Milvus URI holds credentials. Fix: give the URI without them and set "
            f"{ENV_TOKEN} (or {ENV_USER} and {ENV_PASSWORD}) in the environment"
        )
    return uri


def remote(uri: str) -> bool:
    """Whether ``uri`` names a server (``http(s)://``, ``tcp://``) rather than a local
    milvus-lite store."""
    return re.match(r"^(https?|tcp|grpc)://", uri) is not None


def check_collection_name(name: str) -> str:
    """``name`` if Milvus takes it as a collection name (a letter or ``_`` first, then
    letters, digits and ``_``, at most 200), else an error with the fix."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,199}", name) or "__ar2_" in name:
        raise Ar2Error(f"collection name {name!r}: Milvus takes a letter or _ first, then "
                       "letters, digits and _ (and ar2 keeps __ar2_ for its builds). Fix: "
                       "--collection NAME")  # fmt: skip
    return name


def default_collection(folder: str | Path) -> str:
    """A collection name made from an index folder's name.

    Example:
        >>> default_collection("runs/scifact-dense.v2")
        'scifact_dense_v2'
    """
    name = re.sub(r"\W", "_", Path(folder).resolve().name).strip("_") or "ar2"
    return name if re.match(r"[A-Za-z_]", name) else f"ar2_{name}"


def connect(uri: str, timeout: float = 30.0) -> Any:
    """A pymilvus client for ``uri`` with the environment's credentials; an unreachable
    server is an error that names it."""
    pymilvus = require("pymilvus", extra="milvus")
    token = os.environ.get(ENV_TOKEN) or ":".join(
        os.environ.get(k, "") for k in (ENV_USER, ENV_PASSWORD)
    ).strip(":")
    if not remote(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        # milvus-lite's in-process server logs, as an error, each call it does not implement
        # (pymilvus asks it for timestamps, while an index builds and when an iterator
        # starts, and does without): the client's own errors still arrive as exceptions
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
    try:
        return pymilvus.MilvusClient(uri=uri, token=token, timeout=timeout)
    except pymilvus.MilvusException as err:
        problem = f"cannot reach Milvus at {uri} ({_reason(err)})"
        raise StoreUnavailable(f"{problem}. {STORE_FIX}") from None


def _release_local(uri: str) -> None:
    """Stop milvus-lite's engine of the store ``uri`` in this process: pymilvus keeps one per
    path until exit, holding the folder's lock (a moved or reopened folder needs it free)."""
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:  # pragma: no cover - an older milvus-lite: freed at exit
        return
    server_manager_instance.release_server(uri)


def _reason(err: Exception) -> str:
    return str(getattr(err, "message", "") or err).strip().splitlines()[0][:200]


class MilvusIndex:
    """A Milvus collection (through its alias) searched as :class:`~ar2.index.FaissIndex` is:
    ``build``/``add``, ``search``, ``save``/``load``, plus ``delete`` and the documents'
    texts (:meth:`docs`, :class:`StoreDocs`)."""

    def __init__(
        self, client: Any, uri: str, collection: str, manifest: dict[str, Any],
        config: IndexConfig,
    ) -> None:  # fmt: skip
        self.client, self.uri, self.collection = client, uri, collection
        self.manifest, self.config = manifest, config
        self.metric: str = manifest["metric"]
        self.dim: int = manifest["dim"]
        self._lock = threading.Lock()  # a client is shared by the service's threads

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: Sequence[str],
        uri: str,
        collection: str,
        config: IndexConfig | None = None,
        metric: str = "ip",
        docs: Iterable[Doc] = (),
        extra: dict[str, Any] | None = None,
    ) -> MilvusIndex:
        """Fill a new collection with ``vectors`` (and ``docs``' texts, in the same order),
        index it, then point the alias ``collection`` at it; the alias's previous collection
        (an ar2 one: any other is refused) goes after the switch."""
        return cls.build_from(iter([(vectors, list(ids))]), len(ids), vectors.shape[1], uri,
                              collection, config, metric, docs, extra)  # fmt: skip

    @classmethod
    def build_from(
        cls,
        chunks: Iterator[tuple[np.ndarray, list[str]]],
        n: int,
        dim: int,
        uri: str,
        collection: str,
        config: IndexConfig | None = None,
        metric: str = "ip",
        docs: Iterable[Doc] = (),
        extra: dict[str, Any] | None = None,
    ) -> MilvusIndex:
        """:meth:`build` from ``(vectors, ids)`` chunks, ``n`` rows of ``dim`` in all."""
        config = config or IndexConfig()
        check_config(config)
        check_uri(uri)
        check_collection_name(collection)
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRICS)}")
        preset, auto = _preset(config, n, dim)
        kind, params = index_params(preset, n, dim, config)
        check_lite(kind, uri)
        client = connect(uri)
        target = _claim(client, collection)
        building = f"{collection}__ar2_{time.time_ns()}"
        manifest = base_manifest("dense", n) | {
            "store": {"kind": "milvus", "collection": collection},
            "metric": metric,
            "dim": dim,
            "preset": preset,
            "milvus_index": {"type": kind, "params": params},
            "nprobe": config.nprobe,
            "ef_search": config.ef_search,
            "index_config": config.__dict__,
            "refine": 0,
        } | ({"auto_preset": auto} if auto else {}) | (extra or {})  # fmt: skip
        _create(client, building, dim, metric, kind, params, manifest)
        count = _fill(client, building, chunks, iter(docs), n)
        if count != n:
            client.drop_collection(building)
            raise ValueError(f"{count} vectors given, {n} announced")
        client.flush(building)
        client.load_collection(building)
        _switch(client, collection, building, target)
        return cls(client, uri, collection, manifest, config)

    def add(self, vectors: np.ndarray, ids: Sequence[str], docs: Sequence[Doc] = ()) -> None:
        """Insert or replace the rows of ``ids`` (with their ``docs``' texts, in order): a
        document that was there is replaced whole."""
        vectors = _as_float32(vectors, self.dim)
        rows = _rows(vectors, list(ids), docs)
        with self._lock, self._answering():
            self.client.upsert(self.collection, rows, timeout=CALL_TIMEOUT_S)

    def delete(self, ids: Sequence[str]) -> int:
        """Remove the documents ``ids`` (those absent are skipped); how many were there."""
        with self._lock, self._answering():
            found = self.client.get(self.collection, ids=list(ids), output_fields=["id"],
                                    timeout=CALL_TIMEOUT_S)  # fmt: skip
            if found:
                self.client.delete(self.collection, ids=[r["id"] for r in found],
                                   timeout=CALL_TIMEOUT_S)  # fmt: skip
        return len(found)

    def __len__(self) -> int:
        with self._lock, self._answering():
            rows = self.client.query(self.collection, filter="", output_fields=["count(*)"],
                                     timeout=CALL_TIMEOUT_S)  # fmt: skip
        return int(rows[0]["count(*)"])

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` hits for each query vector, best first (scores: higher is better)."""
        queries = _as_float32(queries, self.dim)
        if k <= 0 or not len(queries):
            return [[] for _ in queries]
        params = {"nprobe": self.config.nprobe, "ef": max(self.config.ef_search, k)}
        with self._lock, self._answering():
            found = self.client.search(
                self.collection, data=list(queries), limit=k, output_fields=["id"],
                search_params={"metric_type": METRICS[self.metric], "params": params},
                timeout=CALL_TIMEOUT_S,
            )  # fmt: skip
        sign = -1.0 if self.metric == "l2" else 1.0  # Milvus's L2 is a distance
        return [[Hit(str(h["id"]), sign * float(h["distance"])) for h in row] for row in found]

    def docs(self, ids: Sequence[str]) -> dict[str, Doc]:
        """The stored documents of ``ids`` (those absent are left out)."""
        found: dict[str, Doc] = {}
        for start in range(0, len(ids), GET_IDS):
            chunk = list(ids[start : start + GET_IDS])
            with self._lock, self._answering():
                rows = self.client.get(self.collection, ids=chunk, timeout=CALL_TIMEOUT_S,
                                       output_fields=["id", "title", "text"])  # fmt: skip
            found |= {r["id"]: Doc(r["id"], r["text"], r["title"]) for r in rows}
        return found

    def save(
        self,
        path: str | Path,
        extra: dict[str, Any] | None = None,
        docs: Iterable[Doc] = (),
        overwrite: bool = False,
    ) -> None:
        """Write the index folder (atomically): its ``manifest.json``, the collection's with
        ``extra`` and where the store is; the same manifest goes into the collection's
        property. The documents are in the collection already (``docs`` must be empty); a
        local store inside ``path`` is written by building into the folder
        (:func:`ar2.index.dense.index_corpus`)."""
        if any(True for _ in docs):
            raise ValueError("a Milvus index keeps its documents in the collection")
        if not remote(self.uri) and Path(self.uri).resolve().is_relative_to(Path(path).resolve()):
            raise ValueError(f"the store {self.uri} is inside {path}, which save replaces")
        with atomic_dir(path, overwrite) as tmp:
            self.describe(tmp, extra)

    def describe(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        """Write ``folder/manifest.json`` and the collection's property: the manifest with
        ``extra`` and the store's URI (a local store inside ``folder`` recorded relative to
        it: the folder moves with its store)."""
        self.manifest |= extra or {}
        store = self.manifest["store"] | {"uri": _recorded_uri(self.uri, folder)}
        self.manifest["store"] = store
        with self._lock, self._answering():
            self.client.alter_collection_properties(
                self.collection, properties={PROPERTY: json.dumps(self.manifest)}
            )
        atomic_write_json(folder / "manifest.json", self.manifest)

    @classmethod
    def load(cls, path: str | Path) -> MilvusIndex:
        """Open the collection an index folder names; refused when the collection was built
        by something else than the folder records (another model, another dimension)."""
        path = Path(path)
        manifest = read_manifest(path, kind="dense")
        store = manifest["store"]
        uri = store["uri"] if remote(store["uri"]) else str(path / store["uri"])
        client = connect(uri)
        held = _held_manifest(client, store["collection"], uri)
        for key in ("dim", "metric", "encoder", "data"):
            if held.get(key) != manifest.get(key):
                raise Ar2Error(
                    f"{path}: collection {store['collection']!r} at {uri} was built with "
                    f"another {key} ({_short(held.get(key))}, the folder says "
                    f"{_short(manifest.get(key))}). Fix: rebuild it with `ar2 index "
                    f"--store milvus`, or serve the folder that built it"
                )
        config = IndexConfig(**manifest["index_config"])
        client.load_collection(store["collection"])
        return cls(client, uri, store["collection"], manifest, config)

    def close(self) -> None:
        """Close the client; a local store's engine stops and releases its folder."""
        self.client.close()
        if not remote(self.uri):
            _release_local(self.uri)

    def _answering(self) -> Any:
        return _answering(self.uri)


@contextmanager
def _answering(uri: str) -> Iterator[None]:
    """Turn a failure to reach the store into :class:`StoreUnavailable`."""
    pymilvus = require("pymilvus", extra="milvus")
    try:
        yield
    except pymilvus.MilvusException as err:
        if not _unreachable(err):
            raise
        raise StoreUnavailable(
            f"Milvus at {uri} did not answer ({_reason(err)}). {STORE_FIX}"
        ) from None


def _unreachable(err: Exception) -> bool:
    text = str(err).lower()
    return any(w in text for w in ("unavailable", "connect", "deadline", "timeout", "closed"))


class StoreDocs(Mapping[str, Doc]):
    """The documents of a :class:`MilvusIndex` as a read-only mapping, fetched by id when
    asked (:meth:`fetch` gets many in one call); nothing is held but a few recent ones."""

    def __init__(self, index: MilvusIndex, cached: int = 4096) -> None:
        self.index, self.cached = index, cached
        self._recent: dict[str, Doc] = {}

    def fetch(self, ids: Sequence[str]) -> dict[str, Doc]:
        """The documents of ``ids`` that exist, in one round trip for those not cached."""
        missing = [i for i in dict.fromkeys(ids) if i not in self._recent]
        if missing:
            found = self.index.docs(missing)
            if len(self._recent) + len(found) > self.cached:
                self._recent.clear()
            self._recent |= found
        return {i: self._recent[i] for i in ids if i in self._recent}

    def forget(self, ids: Iterable[str]) -> None:
        """Drop ``ids`` from the cache (they were replaced or deleted)."""
        for i in ids:
            self._recent.pop(i, None)

    def __getitem__(self, doc_id: str) -> Doc:
        return self.fetch([doc_id])[doc_id]

    def __iter__(self) -> Iterator[str]:
        return (d.id for d in self.stream(("id",)))

    def stream(self, fields: Sequence[str] = ("id", "title", "text")) -> Iterator[Doc]:
        """Every document of the collection, read ``GET_IDS`` at a time (memory holds one
        batch); ``fields`` names what is read (the others are empty)."""
        index = self.index
        with index._lock, index._answering():
            batches = index.client.query_iterator(index.collection, batch_size=GET_IDS,
                                                  output_fields=list(fields))  # fmt: skip
        try:
            while True:
                with index._lock, index._answering():
                    batch = batches.next()
                if not batch:
                    return
                yield from (Doc(r["id"], r.get("text", ""), r.get("title", "")) for r in batch)
        finally:
            batches.close()

    def __len__(self) -> int:
        return len(self.index)


def _preset(config: IndexConfig, n: int, d: int) -> tuple[str, dict[str, Any] | None]:
    """The preset (``auto`` resolved as for FAISS) and, for ``auto``, why."""
    if config.preset != "auto":
        return config.preset, None
    _, auto = choose(config, n, d)
    assert auto is not None
    return str(auto["preset"]), auto


def _claim(client: Any, name: str) -> str | None:
    """The ar2 collection the alias ``name`` points at now (the build replaces it), or
    ``None``; refuses a name ar2 did not make. Collections an interrupted build left go."""
    for stale in client.list_collections():
        ours = stale.startswith(f"{name}__ar2_") and PROPERTY in _properties(client, stale)
        if ours and not _aliases(client, stale):  # a killed build's, never another tool's
            client.drop_collection(stale)
    if not client.has_collection(name):
        return None
    target = _alias_target(client, name)
    if target is None or PROPERTY not in _properties(client, name):
        raise Ar2Error(f"collection {name!r} exists and ar2 did not build it: ar2 leaves it "
                       "as it is. Fix: --collection ANOTHER_NAME")  # fmt: skip
    log.info("replacing ar2's collection %s: searches see the old one until the new one is "
             "built", name)  # fmt: skip
    return target


def _alias_target(client: Any, name: str) -> str | None:
    try:
        return str(client.describe_alias(name)["collection_name"])
    except Exception:  # noqa: BLE001 - pymilvus raises its base error for "no such alias"
        return None


def _aliases(client: Any, collection: str) -> list[str]:
    return list(client.list_aliases(collection).get("aliases", []))


def _properties(client: Any, name: str) -> dict[str, str]:
    return dict(client.describe_collection(name).get("properties", {}))


def _held_manifest(client: Any, name: str, uri: str) -> dict[str, Any]:
    if not client.has_collection(name):
        raise Ar2Error(f"no collection {name!r} at {uri}. Fix: build it with `ar2 index "
                       "--store milvus`, or check --uri")  # fmt: skip
    held = _properties(client, name).get(PROPERTY)
    if held is None:
        raise Ar2Error(f"collection {name!r} at {uri} has no ar2 manifest (ar2 did not build "
                       "it). Fix: build one with `ar2 index --store milvus`")  # fmt: skip
    return dict(json.loads(held))


def _create(client: Any, name: str, dim: int, metric: str, kind: str, params: dict[str, Any],
            manifest: dict[str, Any]) -> None:  # fmt: skip
    pymilvus = require("pymilvus", extra="milvus")
    types = pymilvus.DataType
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", types.VARCHAR, is_primary=True, max_length=ID_BYTES)
    schema.add_field("vector", types.FLOAT_VECTOR, dim=dim)
    schema.add_field("title", types.VARCHAR, max_length=TEXT_BYTES)
    schema.add_field("text", types.VARCHAR, max_length=TEXT_BYTES)
    index = client.prepare_index_params()
    index.add_index("vector", index_type=kind, metric_type=METRICS[metric], params=params)
    client.create_collection(name, schema=schema, index_params=index,
                             properties={PROPERTY: json.dumps(manifest)})  # fmt: skip


def _fill(
    client: Any, name: str, chunks: Iterator[tuple[np.ndarray, list[str]]], docs: Iterator[Doc],
    n: int = 0,
) -> int:  # fmt: skip
    """Insert every chunk's rows, each with the next of ``docs`` (none: empty texts), with a
    progress bar over the ``n`` announced."""
    tqdm = require("tqdm").tqdm
    count = 0
    with tqdm(total=n, desc=f"milvus {name}", unit="doc", disable=n < 10 * INSERT_ROWS) as bar:
        for vectors, ids in chunks:
            texts = [next(docs, None) for _ in ids]
            for start in range(0, len(ids), INSERT_ROWS):
                part = slice(start, start + INSERT_ROWS)
                given = [d for d in texts[part] if d is not None]
                client.insert(name, _rows(_as_float32(vectors[part], vectors.shape[1]),
                                          ids[part], given))  # fmt: skip
                bar.update(len(ids[part]))
            count += len(ids)
    return count


def _switch(client: Any, alias: str, building: str, old: str | None) -> None:
    """Point ``alias`` at ``building`` in one step; drop ``old``."""
    if old is None:
        client.create_alias(building, alias)
        return
    client.alter_alias(building, alias)
    client.drop_collection(old)


def _rows(vectors: np.ndarray, ids: list[str], docs: Sequence[Doc]) -> list[dict[str, Any]]:
    """Collection rows; each id, title and text within Milvus's limits (else an error that
    names the document)."""
    if len(vectors) != len(ids) or (docs and len(docs) != len(ids)):
        raise ValueError(f"{len(vectors)} vectors, {len(ids)} ids and {len(docs)} documents")
    rows = []
    for i, doc_id in enumerate(ids):
        doc = docs[i] if docs else None
        if doc is not None and doc.id != doc_id:
            raise ValueError(f"document {doc.id!r} given for id {doc_id!r}")
        title, text = (doc.title, doc.text) if doc is not None else ("", "")
        check_sizes(doc_id, title, text)
        rows.append({"id": doc_id, "vector": vectors[i], "title": title, "text": text})
    return rows


def check_sizes(doc_id: str, title: str, text: str, where: str = "") -> None:
    """Refuse a document Milvus's VARCHAR fields cannot hold (``where``: its file and line)."""
    for field, value, limit in (("id", doc_id, ID_BYTES), ("title", title, TEXT_BYTES),
                                ("text", text, TEXT_BYTES)):  # fmt: skip
        size = len(value.encode("utf-8"))
        if size > limit:
            raise Ar2Error(
                f"{where or 'document'} {doc_id[:80]!r}: its {field} is {size:,} bytes and a "
                f"Milvus collection holds {limit:,}. Fix: split the document into passages "
                "(or shorten its id), or use --store faiss"
            )


def _recorded_uri(uri: str, folder: Path) -> str:
    """A local store inside the index folder is recorded relative to it (the folder moves
    with it); any other as given."""
    if remote(uri):
        return uri
    try:
        return str(Path(uri).resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(Path(uri).resolve())


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def _as_float32(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise Ar2Error(f"vectors of shape {vectors.shape} for a collection of dimension {dim}. "
                       "Fix: encode with the model the index was built with")  # fmt: skip
    return vectors
