"""The exception family of the image contract; each message names the thing and the reason."""

from __future__ import annotations


class ImageSpecError(Exception):
    """Base of every error raised over a published image's files."""


class ManifestError(ImageSpecError):
    """A manifest is malformed, or cannot be found or fetched."""


class SignatureError(ManifestError):
    """A manifest signature is missing, invalid, or made by an untrusted key."""
