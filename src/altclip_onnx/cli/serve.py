"""Commands of the serve package (being written)."""

from __future__ import annotations
