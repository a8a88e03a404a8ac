"""`rpmimg upgrade` from a file:// channel (a directory on a USB stick or a shared folder),
and its --allow-unsigned-packages: the packages of an image built from a distribution that
signs its archive, not each package, carry no header signature; the signed manifest still
pins each one by sha256. The QEMU end-to-end test upgrades its guest this way."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from deploytools import Images, rpmimg, state_of

pytest_plugins = ("deployenv",)


def _configure(sysroot: Path, images: Images) -> None:
    (sysroot / "etc/rpmimg/keys.d").mkdir(parents=True)
    shutil.copy(images.key.public, sysroot / "etc/rpmimg/keys.d/vendor.asc")
    output = images.unsigned.parents[3]  # OUTPUT/images/demo/VERSION/manifest.json
    (sysroot / "etc/rpmimg/channel.conf").write_text(
        f'image = "demo"\nurls = ["{output.as_uri()}/"]\n')


@pytest.mark.root
def test_upgrade_unsigned_packages_only_when_allowed(sysroot: Path, images: Images) -> None:
    _configure(sysroot, images)

    refused = rpmimg("upgrade", "--sysroot", sysroot, check=False)
    assert refused.code != 0
    assert "signature" in refused.err and "Traceback" not in refused.err, refused.err
    assert len(refused.err.strip().splitlines()) == 1, refused.err
    deployments = sysroot / "@rpmimg/deployments"
    assert not deployments.exists() or not any(deployments.iterdir())  # nothing half-made

    done = rpmimg("upgrade", "--sysroot", sysroot, "--allow-unsigned-packages")
    assert "deployed demo 20261124.1 as deployment 1" in done.out, done.out
    state = state_of(sysroot)
    assert state["default"] == "1"
    again = rpmimg("upgrade", "--sysroot", sysroot, "--allow-unsigned-packages")
    assert "nothing new" in again.out, again.out
