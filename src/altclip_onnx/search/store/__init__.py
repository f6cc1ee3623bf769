"""Where an index keeps its rows: the :class:`VectorStore` interface and the stores behind it.

``--db`` (and ``Index.open``) takes a folder for the embedded store (:mod:`.local`: SQLite + usearch), or a
``postgresql://`` / ``postgres://`` URI for PostgreSQL with pgvector. Any other ``scheme://`` is refused
rather than taken for a folder name.
"""

from __future__ import annotations

import os
import re

from ...errors import StoreError
from .base import Entry, VectorStore

__all__ = ["Entry", "VectorStore", "describe_db", "open_store"]

POSTGRES_SCHEMES = ("postgresql", "postgres")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def open_store(db: str | os.PathLike[str], *, create: bool = False) -> VectorStore:
    """The store ``db`` names: a folder (embedded store) or a PostgreSQL URI."""
    text = os.fsdecode(db)
    scheme = _SCHEME.match(text)
    if scheme is None:
        from .local import LocalStore

        return LocalStore(text, create=create)
    if scheme.group(1).lower() in POSTGRES_SCHEMES:
        from .postgres import PostgresStore

        return PostgresStore(text, create=create)
    raise StoreError(f"{describe_db(db)}: unknown database scheme {scheme.group(1)!r}; give a folder for the "
                     f"embedded index or a {' or '.join(s + '://' for s in POSTGRES_SCHEMES)} URI")


def describe_db(db: str | os.PathLike[str]) -> str:
    """``db`` for messages: a URI without its password, neither ``user:PASSWORD@`` nor libpq's ``?password=``."""
    text = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?]*):[^@/?]*@", r"\1:***@", os.fsdecode(db))
    return re.sub(r"([?&]password=)[^&]*", r"\1***", text)
