"""Backends. Import providers from :mod:`artifact_uploader`, not from here."""
