"""The exception family of the deploy client; every message names the thing and the reason."""

from __future__ import annotations


class DeployError(Exception):
    """Base of every error the deploy client raises on bad input or a refused operation."""


class LayoutError(DeployError):
    """The sysroot is not usable: not btrfs, top level not reachable, layout damaged."""


class StateError(DeployError):
    """The state file is unreadable or inconsistent."""


class LockError(DeployError):
    """Another rpmimg holds the sysroot lock."""


class DowngradeError(DeployError):
    """The manifest is older than what is already deployed."""


class DeployFetchError(DeployError):
    """A package or manifest could not be transferred."""


class PackageError(DeployError):
    """A fetched package does not match its manifest entry or does not verify."""


class SpaceError(DeployError):
    """The filesystem lacks room for the deployment."""


class DeploymentError(DeployError):
    """A deployment id is unknown, or an operation on it is refused."""
