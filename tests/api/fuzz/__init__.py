"""Fuzz and hardening tests of the HTTP API (property-based, targeted, and many runs at once)."""
