"""The exception family of the solver package; each message names the thing and the reason."""

from __future__ import annotations


class Error(Exception):
    """Base of every error the compose side raises on bad input or a failed step."""


class DefinitionError(Error):
    """An image definition that is not valid TOML or breaks the schema."""


class RepoError(Error):
    """A repository whose metadata cannot be fetched, checked or parsed."""


class DepsolveError(Error):
    """A definition libsolv cannot satisfy; the message lists the problems in words."""


class FetchError(Error):
    """A package that cannot be downloaded, or whose checksum or signature is wrong."""


class PublishError(Error):
    """An output directory that cannot take a new image version, or a failed signing step."""
