"""Durable storage: the embedded SQLite journal, images and snapshot blobs."""
