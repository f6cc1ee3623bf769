"""Commands of the convert package (being written)."""

from __future__ import annotations
