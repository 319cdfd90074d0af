"""Visual search with a running IEI server and an embedded Qdrant database (qdrant-client's local mode: no
database server, the index lives in a folder).

    python examples/visual_search.py index ../shared/testdata/seed-images --db /tmp/iei-qdrant
    python examples/visual_search.py search --db /tmp/iei-qdrant --image ../shared/testdata/seed-images/bag.png
    python examples/visual_search.py search --db /tmp/iei-qdrant --text "a leather handbag"   # CLIP, SigLIP

`index` embeds every image of a folder (multipart uploads to /embed, in batches the server accepts) and upserts
one point per file (its id derived from the path, so indexing again updates instead of duplicating). `search`
embeds each query image or text the same way and prints the nearest images by cosine similarity. Needs
`pip install qdrant-client httpx` (the `examples` extra) and a server: `iei serve --model ...`.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from qdrant_client import QdrantClient
from qdrant_client.models import Distance, PointStruct, VectorParams

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
TIMEOUT_S = 300.0


class ServerError(Exception):
    """The server refused a request; the message is its own."""


def server_info(url: str) -> dict:
    response = httpx.get(f"{url}/info", timeout=TIMEOUT_S)
    response.raise_for_status()
    return response.json()


def _checked(response: httpx.Response) -> list[list[float]]:
    if response.status_code != 200:
        try:
            message = response.json()["error"]
        except (ValueError, KeyError):
            message = response.text
        raise ServerError(f"{response.request.url.path}: {response.status_code} {message}")
    return response.json()


def embed_images(url: str, paths: list[Path]) -> list[list[float]]:
    """Unit vectors of the images at `paths`, in order (one multipart request per call)."""
    files = [("file", (p.name, p.read_bytes(), mimetypes.guess_type(p.name)[0] or "application/octet-stream"))
             for p in paths]
    return _checked(httpx.post(f"{url}/embed", files=files, timeout=TIMEOUT_S))


def embed_text(url: str, text: str) -> list[float]:
    """The unit vector of a text, in the images' space (CLIP and SigLIP; an image-only model refuses it)."""
    return _checked(httpx.post(f"{url}/embed", json={"inputs": [text], "modality": "text"}, timeout=TIMEOUT_S))[0]


def batches(paths: list[Path], max_count: int, max_bytes: int) -> Iterator[list[Path]]:
    """Groups of at most `max_count` files and (unless one file alone is larger) `max_bytes` bytes."""
    batch: list[Path] = []
    size = 0
    for path in paths:
        file_size = path.stat().st_size
        if batch and (len(batch) == max_count or size + file_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += file_size
    if batch:
        yield batch


def point_id(path: Path) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, path.resolve().as_uri()))


def index_folder(db: QdrantClient, url: str, folder: Path, collection: str) -> int:
    """Embed every image under `folder` into `collection` (created with the model's dimension). Returns the count."""
    info = server_info(url)
    dim = info["embedding_dim"]
    if not db.collection_exists(collection):
        db.create_collection(collection, vectors_config=VectorParams(size=dim, distance=Distance.COSINE))
    elif (size := db.get_collection(collection).config.params.vectors.size) != dim:
        raise ServerError(f"collection {collection!r} holds {size}-dimensional vectors but {info['model_id']} "
                          f"gives {dim}: index into another --collection or --db")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    # Half the payload limit leaves room for multipart framing; the server caps images per request too.
    for batch in batches(paths, info["max_client_batch_size"], info["payload_limit"] // 2):
        vectors = embed_images(url, batch)
        db.upsert(collection, points=[PointStruct(id=point_id(p), vector=v, payload={"path": str(p.resolve())})
                                      for p, v in zip(batch, vectors)])
    return len(paths)


def search(db: QdrantClient, collection: str, vector: list[float], limit: int) -> list[tuple[float, str]]:
    """(cosine similarity, path) of the `limit` nearest images, best first."""
    hits = db.query_points(collection, query=vector, limit=limit).points
    return [(hit.score, hit.payload["path"]) for hit in hits]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://localhost:8000", help="the IEI server")
    parser.add_argument("--db", type=Path, default=Path("iei-qdrant"), help="folder of the local Qdrant database")
    parser.add_argument("--collection", default="images")
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="embed every image of a folder into the database")
    index.add_argument("folder", type=Path)
    query = commands.add_parser("search", help="the nearest images to each query image and text")
    query.add_argument("--image", type=Path, action="append", default=[], help="a query image (repeatable)")
    query.add_argument("--text", action="append", default=[], help="a query text, CLIP or SigLIP (repeatable)")
    query.add_argument("--limit", type=int, default=3)
    query.add_argument("--json", action="store_true", help="one JSON object per query")
    args = parser.parse_args(argv)

    db = QdrantClient(path=str(args.db))
    try:
        if args.command == "index":
            count = index_folder(db, args.url, args.folder, args.collection)
            print(f"indexed {count} images from {args.folder} into {args.db} ({args.collection})")
            return 0
        if not args.image and not args.text:
            parser.error("search needs --image or --text")
        queries = [("image", str(p), embed_images(args.url, [p])[0]) for p in args.image]
        queries += [("text", t, embed_text(args.url, t)) for t in args.text]
        for kind, name, vector in queries:
            results = search(db, args.collection, vector, args.limit)
            if args.json:
                print(json.dumps({"kind": kind, "query": name,
                                  "results": [{"score": score, "path": path} for score, path in results]}))
            else:
                print(f"{kind} {name}:")
                for score, path in results:
                    print(f"  {score:.4f}  {path}")
        return 0
    except (ServerError, httpx.HTTPError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(main())
