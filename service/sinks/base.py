"""The interface every sink implements (defined in core so the registry can name it)."""

from __future__ import annotations

from service.core.emission import Emission, Sink

__all__ = ["Emission", "Sink"]
