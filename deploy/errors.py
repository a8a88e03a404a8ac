"""The exception family of the deploy client; every message names the thing and the reason."""

from __future__ import annotations


class Error(Exception):
    """Base of every error the deploy client raises on bad input or a refused operation."""


class LayoutError(Error):
    """The sysroot is not usable: not btrfs, top level not reachable, layout damaged."""


class StateError(Error):
    """The state file is unreadable or inconsistent."""


class LockError(Error):
    """Another rpmimg holds the sysroot lock."""


class DowngradeError(Error):
    """The manifest is older than what is already deployed."""


class FetchError(Error):
    """A package or manifest could not be transferred."""


class PackageError(Error):
    """A fetched package does not match its manifest entry or does not verify."""


class SpaceError(Error):
    """The filesystem lacks room for the deployment."""


class DeploymentError(Error):
    """A deployment id is unknown, or an operation on it is refused."""
