"""A store's manifests as the node writes and reads them: parsed by `read_facts` (the node
parses in `peer/fetch/manifest_reader.py`, off the event loop when large), and a stored one's
sizes learned on a read when they are due, as `ManifestReader.learn_stored` does."""

from __future__ import annotations

from pieces.descriptors import Repository
from pieces.manifest_facts import read_facts
from pieces.store import Store


def put_manifest(
    store: Store, digest: str, media_type: str, body: bytes, source: Repository
) -> None:
    store.put_manifest(digest, media_type, body, source, read_facts(body).descriptors)


def read_manifest(store: Store, digest: str) -> tuple[str, bytes] | None:
    stored = store.get_manifest(digest)
    if stored is not None and store.manifest_sizes_due(digest):
        store.learn_manifest_sizes(digest, read_facts(stored[1]).descriptors)
    return stored
