"""The exception family of the solver package; each message names the thing and the reason."""

from __future__ import annotations


class ComposeError(Exception):
    """Base of every error the compose side raises on bad input or a failed step."""


class DefinitionError(ComposeError):
    """An image definition that is not valid TOML or breaks the schema."""


class RepoError(ComposeError):
    """A repository whose metadata cannot be fetched, checked or parsed."""


class DepsolveError(ComposeError):
    """A definition libsolv cannot satisfy; the message lists the problems in words."""


class ComposeFetchError(ComposeError):
    """A package that cannot be downloaded, or whose checksum or signature is wrong."""


class PublishError(ComposeError):
    """An output directory that cannot take a new image version, or a failed signing step."""
