"""rpmimg command-line front."""

from host import dataclasses_lean

dataclasses_lean.load()  # before any module of rpmimg's uses dataclasses
