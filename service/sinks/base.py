"""The interface every sink implements (defined in core so the runtime can name it)."""

from __future__ import annotations

from service.core.emission import Emission, Notice, Sink

__all__ = ["Emission", "Notice", "Sink"]
