"""Deploy client pieces that need no packages: state, lock, manifest, signatures, transports."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from imagepub import sign_file
from servers import Faults, http_server, rsync_daemon

from deploy import state
from deploy.errors import LockError
from deploy.lock import sysroot_lock
from deploy.mounts import mount_of, parse_mountinfo
from deploy.signature import fetch_verified_manifest, trusted_key_files
from deploy.sources import open_source
from deploy.sources.rsync import join_url
from fixtures.build import signing_key
from fixtures.signing import SigningKey, generate_key, gnupg_home
from imagespec.errors import ManifestError, SignatureError
from imagespec.manifest import CurationReport, ImageManifest, ManifestPackage, parse
from imagespec.signature import verify_detached
from rpmextents.keyring import KeyFileError, Keyring, read_keys
from rpmextents.nevra import vercmp

HEX = "ab" * 32


def sample_manifest(version: str = "20261122.1") -> ImageManifest:
    pkg = ManifestPackage(
        name="foo", epoch=None, version="1.0", release="1", arch="x86_64", sha256=HEX, size=8192,
        header_sha256=HEX, block_size=4096, source_checksum="sha256:" + HEX, source_size=100,
        location="../../../pool/ab/foo.rpm",
    )
    return ImageManifest(
        name="demo", version=version, arch="x86_64", created="2026-11-22T15:00:00Z",
        inputs_sha256=HEX, block_size=4096, packages=(pkg,), report=CurationReport(),
    )


def manifest_json(version: str = "20261122.1", **package: object) -> dict[str, Any]:
    """The contract writer's JSON of sample_manifest, with package fields overridden."""
    data = sample_manifest(version).to_json()
    data["packages"][0].update(package)
    return data


@pytest.fixture(scope="session")
def key() -> SigningKey:
    return signing_key()


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return generate_key(tmp_path_factory.mktemp("other-key"))


def write_signed(directory: Path, key: SigningKey | None, data: dict[str, object]) -> Path:
    path = directory / "images" / "demo" / str(data["version"]) / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    if key is not None:
        sign_file(path, key)
    return path


# --- state ---------------------------------------------------------------------------------


def test_state_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert state.load(path) == state.State()
    pkg = state.PackageRecord("foo", None, "1.0", "1", "x86_64", HEX, HEX, 10, "/x")
    rec = state.DeploymentRecord("1", "demo", "1", "x86_64", "now", HEX, "/m", 256, (pkg,))
    s = state.State(deployments=(rec,), default="1", next_id=2, newest={"demo": "1"})
    state.save(path, s)
    assert state.load(path) == s
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left


@pytest.mark.parametrize("owner_ids", [None, {"users": {"root": 0, "nobody": None}, "groups": {"root": 0}}])
def test_state_records_serialize_as_asdict_would(owner_ids: dict[str, dict[str, int | None]] | None) -> None:
    """record_json makes each record field by field; the JSON is what dataclasses.asdict gave."""
    pkgs = tuple(state.PackageRecord(f"p{i}", i or None, "1.0", "1", "x86_64", HEX, HEX, i, f"/p{i}")
                 for i in range(3))
    rec = state.DeploymentRecord("1", "demo", "1", "x86_64", "now", HEX, "/m", 256, pkgs, pinned=True,
                                 owner_ids=owner_ids, signed_by="ab", allow_unsigned_packages=True)
    assert json.dumps(state.record_json(rec), sort_keys=True) == json.dumps(
        dataclasses.asdict(rec), sort_keys=True)


def test_state_file_is_a_line_a_package_and_deployments_share_their_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is written a line at a time (C encoder, never whole in memory), each distinct
    package record encoded once; it reads back as the same state whatever its layout, and a
    package in several deployments is one record."""
    shared = [state.PackageRecord(f"p{i}", i or None, "1.0", "1", "x86_64", HEX, HEX, i, f"/p{i}")
              for i in range(4)]
    recs = tuple(state.DeploymentRecord(str(n), "demo", str(n), "x86_64", "now", HEX, "/m", 256 + n,
                                        (*shared[:3], state.PackageRecord("own", 0, "1", str(n), "noarch",
                                                                          HEX, HEX, 7, "/own")),
                                        owner_ids={"users": {"root": 0}, "groups": {}} if n % 2 else None)
                 for n in range(1, 4))
    s = state.State(deployments=recs, default="3", bad=("2",), next_id=4, newest={"demo": "3"}, serial=9)
    path = tmp_path / "state.json"
    encoded: list[str] = []
    package_json = state._package_json
    monkeypatch.setattr(state, "_package_json", lambda p: encoded.append(p.name) or package_json(p))
    state.save(path, s)
    assert sorted(encoded) == ["own", "own", "own", "p0", "p1", "p2"]  # 12 packages, 6 distinct
    text = path.read_text()
    assert json.loads(text) == state.to_json(s)
    lines = text.splitlines()
    assert len(lines) == 1 + 3 * (1 + 4) + 1  # the state's fields, each deployment and its packages, the end
    assert all(json.loads(line.rstrip(",").removesuffix("]}")) for line in lines if line.startswith('{"arch"'))
    loaded = state.load(path)
    assert loaded == s
    assert loaded.deployments[0].packages[1] is loaded.deployments[2].packages[1]
    assert loaded.deployments[0].packages[3] is not loaded.deployments[1].packages[3]  # release differs
    # An older state file, indented as json.dumps wrote it, reads as the same state.
    path.write_text(json.dumps(state.to_json(s), indent=1, sort_keys=True))
    assert state.load(path) == s
    s0 = state.State()
    state.save(path, s0)
    assert state.load(path) == s0


def test_state_damaged_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"format": 1, "deployments": [{"id": 1}]')
    with pytest.raises(state.StateError, match="unreadable state file"):
        state.load(path)
    path.write_text('{"format": 1, "deployments": [{"id": "1"}]}')
    with pytest.raises(state.StateError, match="malformed state file"):
        state.load(path)


# --- lock ----------------------------------------------------------------------------------


def _hold_lock(path: str, ready: multiprocessing.synchronize.Event, release: multiprocessing.synchronize.Event) -> None:
    with sysroot_lock(Path(path)):
        ready.set()
        release.wait(10)


def test_lock_waits_briefly_then_names_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(os.fspath(lock), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        start = time.monotonic()
        with pytest.raises(LockError, match=f"pid {holder.pid}"), sysroot_lock(lock, wait=0.5):
            pass
        assert 0.4 < time.monotonic() - start < 3
    finally:
        release.set()
        holder.join(10)
    with sysroot_lock(lock, wait=0.5):  # free again once the holder is gone
        pass


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    code = f"from deploy.lock import sysroot_lock; import time, pathlib\nwith sysroot_lock(pathlib.Path({os.fspath(lock)!r})):\n    print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
    proc.kill()
    proc.wait()
    with sysroot_lock(lock, wait=1):
        pass


# --- manifest ------------------------------------------------------------------------------


def test_manifest_parses() -> None:
    m = parse(json.dumps(manifest_json()).encode())
    assert (m.name, m.version, m.block_size) == ("demo", "20261122.1", 4096)
    assert m.packages[0].nvra == "foo-1.0-1.x86_64"
    assert m.packages[0].zstd is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "../etc"}, "field 'name' has an invalid value"),
        ({"sha256": "xyz"}, "field 'sha256' has an invalid value"),
        ({"size": -1}, "field 'size' is negative"),
        ({"size": True}, "field 'size' should be int"),
        ({"block_size": 512}, "block size 512 differs"),
        ({"version": "1/2"}, "field 'version' has an invalid value"),
        ({"epoch": "1"}, "field 'epoch' should be null"),
    ],
)
def test_manifest_bad_package_fields_are_named(change: dict[str, object], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse(json.dumps(manifest_json(**change)).encode())


def test_manifest_bad_documents() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse(b"{")
    with pytest.raises(ManifestError, match="unsupported manifest format 2"):
        parse(json.dumps({**manifest_json(), "format": 2}).encode())
    dup = manifest_json()
    dup["packages"] = [dup["packages"][0], dup["packages"][0]]
    with pytest.raises(ManifestError, match="listed twice"):
        parse(json.dumps(dup).encode())


def test_versions_compare_like_rpm() -> None:
    assert vercmp("20261122.2", "20261122.10") < 0
    assert vercmp("20261123.1", "20261122.9") > 0
    assert vercmp("20261122.1", "20261122.1") == 0


# --- signatures ----------------------------------------------------------------------------


def test_signature_good_tampered_wrong_key_unsigned(tmp_path: Path, key: SigningKey, other_key: SigningKey) -> None:
    data = tmp_path / "m.json"
    data.write_bytes(b'{"hello": 1}')
    sig = sign_file(data, key).read_bytes()
    trusted, other = Keyring.from_files([key.public]), Keyring.from_files([other_key.public])
    assert verify_detached(data.read_bytes(), sig, trusted, "m") == key.fingerprint
    with pytest.raises(SignatureError, match="BAD signature"):
        verify_detached(b'{"hello": 2}', sig, trusted, "m")
    with pytest.raises(SignatureError, match="not a trusted key"):
        verify_detached(data.read_bytes(), sig, other, "m")
    with pytest.raises(SignatureError, match="no trusted keys"):
        verify_detached(data.read_bytes(), sig, Keyring.from_files([]), "m")
    with pytest.raises(SignatureError, match="not a valid OpenPGP signature"):
        verify_detached(data.read_bytes(), b"garbage\n", trusted, "m")
    # Both keys trusted: the right one is found among several.
    both = Keyring.from_files([other_key.public, key.public])
    assert verify_detached(data.read_bytes(), sig, both, "m") == key.fingerprint
    # A binary keyring file holding both keys, as `gpg --export` writes it, works the same.
    binary = tmp_path / "both.gpg"
    binary.write_bytes(_binary(other_key) + _binary(key))
    assert verify_detached(data.read_bytes(), sig, Keyring.from_files([binary]), "m") == key.fingerprint



def test_expired_signature_is_refused_with_its_reason(tmp_path: Path, key: SigningKey,
                                                     other_key: SigningKey) -> None:
    """gpgv reports a good but expired signature as EXPSIG beside VALIDSIG: it is refused, and
    says so, also when the keyring holds other keys (so each key is tried alone)."""
    data = tmp_path / "m.json"
    data.write_bytes(b'{"hello": 1}')
    sig = tmp_path / "m.json.asc"
    with gnupg_home(key) as home:
        subprocess.run(["gpg", "--batch", "--armor", "--default-sig-expire", "seconds=1", "--detach-sign",
                        "--local-user", key.fingerprint, "--output", os.fspath(sig), os.fspath(data)],
                       env={"GNUPGHOME": os.fspath(home), "PATH": os.environ["PATH"]},
                       check=True, capture_output=True)
    time.sleep(2.1)
    for keys in ([key.public], [other_key.public, key.public]):
        with pytest.raises(SignatureError, match=r"^m: signature expired$"):
            verify_detached(data.read_bytes(), sig.read_bytes(), Keyring.from_files(keys), "m")

def _binary(key: SigningKey) -> bytes:
    return subprocess.run(["gpg", "--dearmor"], input=key.public.read_bytes(),
                          capture_output=True, check=True).stdout


def _unreadable(key: SigningKey) -> bytes:
    """key with its primary key packet claiming version 5: framed as a key, but neither
    rpm 4.18 nor gpgv reads it, and gpgv gives up on a keyring that holds it first."""
    data = _binary(key)
    assert data[0] == 0x99  # an old-format public key packet with a two-byte length
    return data[:3] + b"\x05" + data[4:]


def test_a_key_gpgv_cannot_read_does_not_hide_the_signer(tmp_path: Path, key: SigningKey,
                                                          other_key: SigningKey) -> None:
    from imagespec.signature import _gpgv

    data = b'{"hello": 1}'
    (tmp_path / "m.json").write_bytes(data)
    sig = sign_file(tmp_path / "m.json", key).read_bytes()
    broken = tmp_path / "broken.gpg"
    broken.write_bytes(_unreadable(other_key))
    with pytest.raises(KeyFileError, match=f"{broken}: not a usable OpenPGP public key"):
        Keyring.from_files([broken])  # rpm refuses it
    ring = Keyring.read_files([broken, key.public])  # read for gpgv alone, it is taken
    assert not _gpgv(data, sig, ring.openpgp_bytes()).conclusive  # gpgv, all keys at once
    assert verify_detached(data, sig, ring, "m") == key.fingerprint
    with pytest.raises(SignatureError, match="BAD signature"):
        verify_detached(b'{"hello": 2}', sig, ring, "m")
    with pytest.raises(SignatureError, match="not a trusted key"):
        verify_detached(data, sig, Keyring.read_files([broken]), "m")


def test_package_keyring_skips_a_keys_d_key_rpm_cannot_use(tmp_path: Path, key: SigningKey,
                                                           other_key: SigningKey,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from deploy.signature import package_keyring

    broken = tmp_path / "broken.gpg"
    broken.write_bytes(_unreadable(other_key))
    ring = package_keyring([broken, key.public], given=[key.public])
    assert ring.keys == Keyring.from_files([key.public]).keys
    assert f"{broken}: skipped: not a usable OpenPGP public key" in caplog.text
    with pytest.raises(KeyFileError, match=f"{broken}: not a usable"):
        package_keyring([broken, key.public], given=[broken])  # given on the command line


def test_armoured_and_binary_keys_read_the_same(key: SigningKey, other_key: SigningKey) -> None:
    armoured = key.public.read_bytes()
    binary = _binary(key)
    assert read_keys(armoured, "k") == read_keys(binary, "k") == [binary]
    assert read_keys(_binary(other_key) + binary, "k") == [_binary(other_key), binary]
    # Two armoured blocks in one file are two keys too.
    assert len(read_keys(other_key.public.read_bytes() + armoured, "k")) == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty key file"),
        (b"not a key\n", "not an OpenPGP public key"),
        (b"\x99\x01", "truncated OpenPGP packet at offset 0"),
        (b"\xb4\x03abc", "first packet has tag 13"),  # a user id without a key
        (b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!\n-----END PGP PUBLIC KEY BLOCK-----\n",
         "damaged armoured key"),
        (b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n", "no public key block found"),
    ],
)
def test_bad_key_files_are_named(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "key.gpg"
    path.write_bytes(data)
    with pytest.raises(KeyFileError, match=f"{path}: .*{message}"):
        Keyring.from_files([path])


def test_a_truncated_binary_key_is_refused(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "key.gpg"
    path.write_bytes(_binary(key)[:-5])
    with pytest.raises(KeyFileError, match="truncated OpenPGP packet"):
        Keyring.from_files([path])


def test_trusted_key_files_from_sysroot(tmp_path: Path, key: SigningKey) -> None:
    d1, d2 = tmp_path / "etc/rpmimg/keys.d", tmp_path / "usr/lib/rpmimg/keys.d"
    d1.mkdir(parents=True)
    d2.mkdir(parents=True)
    (d1 / "vendor.asc").write_bytes(key.public.read_bytes())
    (d2 / "os.asc").write_bytes(key.public.read_bytes())
    (d2 / ".hidden").write_text("x")
    extra = tmp_path / "extra.asc"
    assert trusted_key_files(tmp_path, [extra]) == [extra, d1 / "vendor.asc", d2 / "os.asc"]


# --- transports: manifest + signature over every transport -----------------------------------


def test_manifest_from_directory_file_url_http_rsync(tmp_path: Path, key: SigningKey) -> None:
    out = tmp_path / "out"
    path = write_signed(out, key, manifest_json())
    (out / "images/demo/latest").symlink_to("20261122.1")
    specs = [os.fspath(path), os.fspath(path.parent), os.fspath(out / "images/demo"),
             os.fspath(out), "file://" + os.fspath(path)]
    for spec in specs:
        m, _, fpr = fetch_verified_manifest(open_source(spec), [key.public])
        assert (m.version, fpr) == ("20261122.1", key.fingerprint), spec
    with http_server(out) as base:
        m, _, _ = fetch_verified_manifest(
            open_source(f"{base}/images/demo/latest/manifest.json"), [key.public]
        )
        assert m.version == "20261122.1"
    with rsync_daemon(out, tmp_path / "rsyncd") as base:
        src = open_source(f"{base}/images/demo/20261122.1/manifest.json")
        m, _, _ = fetch_verified_manifest(src, [key.public])
        assert m.version == "20261122.1"
        assert src.package_url(m.packages[0]) == f"{base}/pool/ab/foo.rpm"


def test_unsigned_and_tampered_manifests_are_refused_over_http(tmp_path: Path, key: SigningKey) -> None:
    out = tmp_path / "out"
    unsigned = write_signed(out, None, manifest_json("20261122.1"))
    tampered = write_signed(out, key, manifest_json("20261122.2"))
    tampered.write_text(tampered.read_text().replace('"1.0"', '"6.6"'))
    with http_server(out) as base:
        with pytest.raises(SignatureError, match="not signed"):
            fetch_verified_manifest(open_source(f"{base}/{unsigned.relative_to(out)}"), [key.public])
        with pytest.raises(SignatureError, match="BAD signature"):
            fetch_verified_manifest(open_source(f"{base}/{tampered.relative_to(out)}"), [key.public])


def test_http_retries_transient_errors(tmp_path: Path, key: SigningKey) -> None:
    out = tmp_path / "out"
    path = write_signed(out, key, manifest_json())
    faults = Faults(fail_first={"manifest.json": 2})
    with http_server(out, faults) as base:
        m, _, _ = fetch_verified_manifest(open_source(f"{base}/{path.relative_to(out)}"), [key.public])
    assert m.name == "demo"
    assert sum(1 for p, _ in faults.requests if p.endswith("manifest.json")) == 3


def test_sources_refuse_unknown_schemes_and_missing_manifests(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="unsupported URL scheme 'ftp'"):
        open_source("ftp://example.invalid/manifest.json")
    with pytest.raises(ManifestError, match=r"no manifest\.json found"):
        open_source(os.fspath(tmp_path))
    with pytest.raises(ManifestError, match="no such file"):
        open_source(os.fspath(tmp_path / "absent"))


def test_rsync_url_join() -> None:
    base = "rsync://h:873/mod/images/demo/1/manifest.json"
    assert join_url(base, "../../../pool/ab/x.rpm") == "rsync://h:873/mod/pool/ab/x.rpm"
    assert join_url(base, "manifest.json.asc") == "rsync://h:873/mod/images/demo/1/manifest.json.asc"


# --- mounts --------------------------------------------------------------------------------


def test_mountinfo_parsing_and_lookup() -> None:
    text = (
        "22 1 0:21 /@ / rw,relatime shared:1 - btrfs /dev/sda2 rw,subvol=/@\n"
        "30 22 0:21 /@rpmimg/deployments/3 /usr ro,relatime shared:2 - btrfs /dev/sda2 ro,subvol=/@rpmimg/deployments/3\n"
        "31 22 0:30 / /mnt/with\\040space rw - btrfs /dev/sdb rw\n"
    )
    mounts = parse_mountinfo(text)
    assert mounts[1].root == "/@rpmimg/deployments/3"
    assert mounts[2].mount_point == Path("/mnt/with space")
    assert mount_of(Path("/usr"), mounts).mount_point == Path("/usr")
    assert mount_of(Path("/"), mounts).root == "/@"
