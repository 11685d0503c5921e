"""The Qdrant store: one code path for the embedded folder and a Qdrant server."""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence, cast

import numpy as np
from qdrant_client import QdrantClient, models

from smallfirst.errors import RetrievalUnavailable, StoreLocked
from smallfirst.retrieval.exact_index import ExactIndex
from smallfirst.retrieval.phrase_index import PhraseIndex, phrase_words

log = logging.getLogger(__name__)

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
POINT_NAMESPACE = uuid.UUID("6f2a4f0e-1c1e-5b8e-9a57-5d9a1c3f7e21")
PAYLOAD_KEYS = ("doc_id", "doc_version")


def point_id(doc_id: str, doc_version: str, chunk_index: int) -> str:
    """Deterministic id of one chunk: the same document content always yields the same ids."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{doc_id}\x00{doc_version}\x00{chunk_index}"))


@dataclass(frozen=True)
class ChunkPoint:
    """A chunk ready to be written: its vector and payload."""

    doc_id: str
    doc_version: str
    chunk_index: int
    chunk_count: int
    title: str
    uri: str
    text: str
    vector: Sequence[float]
    extra: tuple[tuple[str, Any], ...] = ()  # e.g. (("page", 3),) or (("language", "python"),)

    @property
    def id(self) -> str:
        return point_id(self.doc_id, self.doc_version, self.chunk_index)

    def payload(self) -> dict[str, Any]:
        return {
            "text": self.text, "doc_id": self.doc_id, "doc_version": self.doc_version,
            "chunk_index": self.chunk_index, "chunk_count": self.chunk_count,
            "title": self.title, "uri": self.uri, **dict(self.extra),
        }


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: str
    score: float
    doc_id: str
    doc_version: str
    chunk_index: int
    title: str
    uri: str
    text: str
    page: int | None = None
    language: str | None = None

    @classmethod
    def from_point(cls, point: models.ScoredPoint) -> Hit:
        return cls.from_payload(str(point.id), float(point.score), point.payload)

    @classmethod
    def from_payload(cls, point_id: str, score: float, payload: dict[str, Any] | None) -> Hit:
        p = payload or {}
        return cls(
            id=point_id, score=score, doc_id=str(p.get("doc_id", "")),
            doc_version=str(p.get("doc_version", "")), chunk_index=int(p.get("chunk_index", 0)),
            title=str(p.get("title", "")), uri=str(p.get("uri", "")), text=str(p.get("text", "")),
            page=p.get("page"), language=p.get("language"),
        )


DUPLICATE_REACH = 8  # a search looks this many times top_k deep at most for distinct chunks
PHRASE_WORDS = 6  # a Qdrant server matches the last this many words of a phrase (then the last three)


@dataclass
class LocalIndexes:
    """One collection's in-memory indexes over the embedded store: vectors and phrases."""

    vectors: ExactIndex
    phrases: PhraseIndex


def distinct_hits(hits: Sequence[Hit]) -> list[Hit]:
    """``hits`` without those whose text (whitespace aside) repeats an earlier one's."""
    seen: set[str] = set()
    out: list[Hit] = []
    for hit in hits:
        key = " ".join(hit.text.split())
        if key not in seen:
            seen.add(key)
            out.append(hit)
    return out


@dataclass
class DocState:
    """What the store holds for one document version."""

    points: int = 0
    chunk_count: int = 0


class ChunkStore(Protocol):
    """What the sync routine writes through: one collection's inventory, writes and deletes
    (a :class:`VectorStore`, or the service worker's handle that runs each call on the store's thread)."""

    def inventory(self) -> dict[str, dict[str, DocState]]: ...

    def upsert(self, points: Iterable[ChunkPoint]) -> int: ...

    def delete_doc(self, doc_id: str, keep_version: str | None = None) -> None: ...


@contextlib.contextmanager
def _quiet_local_size() -> Iterator[None]:
    """qdrant-client warns about local mode past 20,000 points because its own search slows down;
    searches here go through the exact index instead, so the warning would only mislead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Local mode is not recommended", category=UserWarning)
        yield


def open_local_client(path: Path | None) -> QdrantClient:
    """The embedded store in ``path``; a folder held by another process raises :class:`StoreLocked`."""
    if path is None:
        raise RetrievalUnavailable("the embedded store needs a folder (or set a Qdrant server URL)")
    path.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet_local_size():
            return QdrantClient(path=str(path))
    except RuntimeError as exc:
        if "already accessed" in str(exc):
            raise StoreLocked(
                f"the embedded store {path} is in use by another process (is `smallfirst serve` or an ingest "
                "running?); stop it first, or set SMALLFIRST_QDRANT_URL to share a Qdrant server"
            ) from None
        raise


class VectorStore:
    """Collection schema, writes, inventory and search over one Qdrant collection.

    Over the embedded store (``indexes`` given, shared by every collection of one client), search
    runs on an :class:`ExactIndex` and phrase look-ups on a :class:`PhraseIndex` per collection,
    built from the store on first use and updated by every write made here; the store itself stays
    the durable copy."""

    def __init__(self, client: QdrantClient, collection: str, dimension: int,
                 indexes: dict[str, LocalIndexes] | None = None) -> None:
        self.client = client
        self.collection = collection
        self.dimension = dimension
        self._indexes = indexes

    @property
    def _local(self) -> LocalIndexes | None:
        """This collection's in-memory indexes (embedded store only), built on first use."""
        if self._indexes is None:
            return None
        local = self._indexes.get(self.collection)
        if local is None:
            local = self._indexes[self.collection] = self._build_indexes()
        return local

    @property
    def _index(self) -> ExactIndex | None:
        """This collection's exact index (embedded store only)."""
        local = self._local
        return local.vectors if local is not None else None

    def _build_indexes(self) -> LocalIndexes:
        local = LocalIndexes(ExactIndex(self.dimension), PhraseIndex())
        if not self.client.collection_exists(self.collection):
            return local
        offset: Any = None
        while True:
            points, offset = self.client.scroll(self.collection, limit=4096, offset=offset, with_vectors=True,
                                                with_payload=["doc_id", "doc_version", "text"])
            points = [p for p in points if isinstance(p.vector, list)]
            local.vectors.add((str(p.id), str((p.payload or {}).get("doc_id", "")),
                               str((p.payload or {}).get("doc_version", "")), cast(list[float], p.vector)) for p in points)
            local.phrases.add((str(p.id), str((p.payload or {}).get("text", ""))) for p in points)
            if offset is None:
                return local

    @classmethod
    def open(
        cls, collection: str, dimension: int, *, path: Path | None = None,
        url: str | None = None, api_key: str | None = None,
    ) -> "VectorStore":
        """Open a Qdrant server (``url``) or the embedded store folder (``path``) and ensure the collection."""
        try:
            client = QdrantClient(url=url, api_key=api_key, timeout=10) if url else open_local_client(path)
        except StoreLocked:
            raise
        except Exception as exc:
            raise RetrievalUnavailable(f"cannot open the vector store: {exc}") from exc
        store = cls(client, collection, dimension, indexes=None if url else {})
        try:
            store.ensure_collection()
            store._local  # noqa: B018 - built now, so the first search is as fast as the rest
        except Exception as exc:
            client.close()
            if isinstance(exc, RetrievalUnavailable):
                raise
            raise RetrievalUnavailable(f"cannot reach the vector store: {exc}") from exc
        return store

    def with_collection(self, name: str) -> "VectorStore":
        """The same store (and client) over another collection."""
        return VectorStore(self.client, name, self.dimension, self._indexes)

    def exists(self) -> bool:
        return bool(self.client.collection_exists(self.collection))

    def ensure_collection(self) -> None:
        """Create the collection and its payload indexes if missing; check the vector size."""
        if not self.client.collection_exists(self.collection):
            self.client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(size=self.dimension, distance=models.Distance.COSINE),
            )
            with warnings.catch_warnings():  # the embedded store has no payload indexes and says so
                warnings.simplefilter("ignore", UserWarning)
                for key in PAYLOAD_KEYS:
                    self.client.create_payload_index(self.collection, key, models.PayloadSchemaType.KEYWORD)
                self.client.create_payload_index(self.collection, "text", models.TextIndexParams(
                    type=models.TextIndexType.TEXT, tokenizer=models.TokenizerType.WORD, lowercase=True,
                    phrase_matching=True))
            return
        info = self.client.get_collection(self.collection)
        vectors = info.config.params.vectors
        size = vectors.size if isinstance(vectors, models.VectorParams) else None
        if size is not None and size != self.dimension:
            raise RetrievalUnavailable(
                f"collection {self.collection!r} holds {size}-d vectors but the embedder makes "
                f"{self.dimension}-d ones; use another collection or re-create it"
            )

    def upsert(self, points: Iterable[ChunkPoint]) -> int:
        """Write chunks and wait until they are stored; returns how many were written."""
        chunks = list(points)
        batch = [models.PointStruct(id=p.id, vector=list(map(float, p.vector)), payload=p.payload()) for p in chunks]
        if batch:
            with _quiet_local_size():
                self.client.upsert(self.collection, points=batch, wait=True)
            local = self._local
            if local is not None:
                local.vectors.add((p.id, p.doc_id, p.doc_version, p.vector) for p in chunks)
                local.phrases.add((p.id, p.text) for p in chunks)
        return len(batch)

    def delete_doc(self, doc_id: str, keep_version: str | None = None) -> None:
        """Delete a document's chunks, all of them or every version but ``keep_version``."""
        local = self._local
        if local is not None:  # the index knows the ids: no scan of every payload
            ids = local.vectors.doc_points(doc_id, keep_version)
            if ids:
                self.client.delete(self.collection, points_selector=models.PointIdsList(points=list(ids)), wait=True)
                local.vectors.remove(ids)
                local.phrases.remove(ids)
            return
        must: list[models.Condition] = [models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))]
        must_not: list[models.Condition] = []
        if keep_version is not None:
            must_not.append(models.FieldCondition(key="doc_version", match=models.MatchValue(value=keep_version)))
        self.client.delete(
            self.collection,
            points_selector=models.FilterSelector(filter=models.Filter(must=must, must_not=must_not)),
            wait=True,
        )

    def inventory(self) -> dict[str, dict[str, DocState]]:
        """Every stored document with, per version, its point count and expected chunk count."""
        docs: dict[str, dict[str, DocState]] = {}
        offset: Any = None
        while True:
            points, offset = self.client.scroll(
                self.collection, limit=1024, offset=offset,
                with_payload=["doc_id", "doc_version", "chunk_count"], with_vectors=False,
            )
            for point in points:
                p = point.payload or {}
                state = docs.setdefault(str(p.get("doc_id")), {}).setdefault(str(p.get("doc_version")), DocState())
                state.points += 1
                state.chunk_count = int(p.get("chunk_count", 0))
            if offset is None:
                return docs

    def search(self, vector: Sequence[float], top_k: int) -> list[Hit]:
        """The ``top_k`` distinct chunks nearest to ``vector`` by cosine similarity.

        A chunk whose text repeats a better hit's (the same page ingested under two roots, a
        boilerplate paragraph on every page) is skipped, so copies never crowd out other text;
        the search reaches further, up to ``DUPLICATE_REACH`` times ``top_k``, to make up for them."""
        limit = top_k
        while True:
            found = self._nearest(vector, limit)
            hits = distinct_hits(found)
            if len(hits) >= top_k or len(found) < limit or limit >= top_k * DUPLICATE_REACH:
                return hits[:top_k]
            limit = min(limit * 2, top_k * DUPLICATE_REACH)

    def _nearest(self, vector: Sequence[float], top_k: int) -> list[Hit]:
        """The ``top_k`` chunks nearest to ``vector``, copies included."""
        index = self._index
        if index is not None:
            try:
                nearest = index.search(vector, top_k)
                records = {str(r.id): r for r in self.client.retrieve(
                    self.collection, ids=[i for i, _ in nearest], with_payload=True, with_vectors=False)}
            except Exception as exc:
                raise RetrievalUnavailable(f"search failed: {exc}") from exc
            return [Hit.from_payload(i, score, records[i].payload) for i, score in nearest if i in records]
        try:
            result = self.client.query_points(
                self.collection, query=list(map(float, vector)), limit=top_k, with_payload=True,
            )
        except Exception as exc:
            raise RetrievalUnavailable(f"search failed: {exc}") from exc
        return [Hit.from_point(point) for point in result.points]

    def phrase_hits(self, text: str, limit: int) -> list[Hit]:
        """Up to ``limit`` distinct chunks that hold the last three words of ``text`` (words as
        :func:`~smallfirst.retrieval.phrase_index.phrase_words` reads them), those that hold
        more of the words before first where there are many; score 0."""
        words = phrase_words(text)
        if len(words) < 3 or limit <= 0:
            return []
        try:
            local = self._local
            if local is not None:
                ids = local.phrases.find(text, limit)
                records = self.client.retrieve(self.collection, ids=ids, with_payload=True, with_vectors=False) if ids else []
                by_id = {str(r.id): r for r in records}
                return distinct_hits([Hit.from_payload(i, 0.0, by_id[i].payload) for i in ids if i in by_id])
            for n in dict.fromkeys((min(PHRASE_WORDS, len(words)), 3)):  # the longer phrase first
                phrase = models.Filter(must=[models.FieldCondition(
                    key="text", match=models.MatchPhrase(phrase=" ".join(words[-n:])))])
                points, _ = self.client.scroll(self.collection, scroll_filter=phrase, limit=limit,
                                               with_payload=True, with_vectors=False)
                if points:
                    return distinct_hits([Hit.from_payload(str(p.id), 0.0, p.payload) for p in points])
            return []
        except Exception as exc:
            raise RetrievalUnavailable(f"phrase look-up failed: {exc}") from exc

    def top_scores(self, vectors: np.ndarray | Sequence[Sequence[float]]) -> list[float]:
        """The best hit's score for each vector (0 when the collection is empty), in one batch."""
        index = self._index
        if index is not None:
            return index.top_scores(np.asarray(vectors, dtype=np.float32))
        requests = [models.QueryRequest(query=list(map(float, v)), limit=1) for v in vectors]
        try:
            results = self.client.query_batch_points(self.collection, requests=requests)
        except Exception as exc:
            raise RetrievalUnavailable(f"search failed: {exc}") from exc
        return [float(r.points[0].score) if r.points else 0.0 for r in results]

    def sample_texts(self, limit: int) -> list[str]:
        """The texts of up to ``limit`` chunks (ids are hashes, so the first ones are a fair sample)."""
        points, _ = self.client.scroll(self.collection, limit=limit, with_payload=["text"], with_vectors=False)
        return [str((p.payload or {}).get("text", "")) for p in points]

    def source_of(self, doc_id: str) -> tuple[str, str] | None:
        """(file path, ingested folder) of a stored document, from its payload; None when unknown or
        written before documents kept their folder."""
        flt = models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))])
        points, _ = self.client.scroll(self.collection, scroll_filter=flt, limit=1, with_payload=["path", "root"],
                                       with_vectors=False)
        if not points:
            return None
        payload = points[0].payload or {}
        path, root = payload.get("path"), payload.get("root")
        return (path, root) if isinstance(path, str) and isinstance(root, str) else None

    def collections(self) -> list[str]:
        """Names of every collection in the store."""
        return [c.name for c in self.client.get_collections().collections]

    def count(self) -> int:
        """Number of stored chunks."""
        return int(self.client.count(self.collection, exact=True).count)

    def close(self) -> None:
        """Release the store (and, in embedded mode, its folder lock)."""
        try:
            self.client.close()
        except Exception:  # closing twice or after a failure is harmless
            log.debug("closing the store failed", exc_info=True)
