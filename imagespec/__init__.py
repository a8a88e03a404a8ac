"""The contract between `rpmimg compose` and `rpmimg deploy`: what a published image is.

The server writes with it and the client parses with it, so the two can't drift:
the manifest model with its one strict parser and one writer (`imagespec.manifest`),
the file names of a published image (`imagespec.published`), the package diff both
sides print (`imagespec.diff`) and detached manifest signatures (`imagespec.signature`).
Package identity and rpm's version order come from `rpmextents.nevra`, one layer down,
because the format needs them too.
"""
