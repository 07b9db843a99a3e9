"""Thin HTTP layer: app factory, routers, wire schemas, error mapping."""

from service.api.app import create_app

__all__ = ["create_app"]
