"""Key files: atomic writes, secret-key permissions, directories of authorised keys."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from radium.remoting._errors import ConfigError, UsageError
from radium.remoting._keys import (
    KeyDirectory,
    KeyPair,
    check_name,
    is_z85_key,
    load_keypair,
    load_or_create_server_keys,
    save_keypair,
    save_public_key,
    write_atomic,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test: `umask(0o077)`; restored afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


# --- write_atomic ------------------------------------------------------------------------


@pytest.mark.parametrize("wanted", [0o600, 0o644, 0o640, 0o400])
@pytest.mark.parametrize("mask", [0o000, 0o077])
def test_write_atomic_creates_the_file_with_the_given_mode_whatever_the_umask(tmp_path, umask, wanted, mask):
    umask(mask)
    path = tmp_path / "f"
    write_atomic(path, b"data", mode=wanted)
    assert path.read_bytes() == b"data"
    assert mode(path) == wanted


def test_write_atomic_defaults_to_0600(tmp_path, umask):
    umask(0)
    write_atomic(tmp_path / "f", "x")
    assert mode(tmp_path / "f") == 0o600


def test_write_atomic_writes_text_as_utf8_and_makes_folders(tmp_path):
    path = tmp_path / "a" / "b" / "f.txt"
    write_atomic(path, "clé ✓\n")
    assert path.read_bytes() == "clé ✓\n".encode()
    assert os.listdir(path.parent) == ["f.txt"]


def test_write_atomic_replaces_the_file_rather_than_rewriting_it(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old content, all of it")
    path.chmod(0o644)
    with open(path, "rb") as reader:  # a reader that opened the old file keeps it whole
        write_atomic(path, b"new", mode=0o600)
        assert reader.read() == b"old content, all of it"
    assert path.read_bytes() == b"new"
    assert mode(path) == 0o600  # the new file's mode, not the old one's
    assert os.listdir(tmp_path) == ["f"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(path, 12345)  # type: ignore[arg-type]  # fails while writing
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_a_failed_write_of_a_new_file_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_atomic(tmp_path / "new", object())  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_a_failed_rename_leaves_no_temporary(tmp_path):
    target = tmp_path / "f"
    target.mkdir()
    (target / "inside").write_text("keep")
    with pytest.raises(OSError):
        write_atomic(target, b"data")
    assert sorted(os.listdir(tmp_path)) == ["f"]
    assert (target / "inside").read_text() == "keep"


# --- key pairs ----------------------------------------------------------------------------


def test_save_keypair_keeps_the_secret_in_a_0600_file(tmp_path, umask):
    umask(0)
    pair = KeyPair.generate()
    path = tmp_path / "keys" / "vm1.key"
    save_keypair(path, "vm1", pair)
    secret = Path(str(path) + "_secret")
    assert mode(secret) == 0o600
    assert mode(path) == 0o644
    assert pair.secret not in path.read_text()
    assert pair.secret in secret.read_text()
    assert load_keypair(secret) == pair
    assert load_keypair(path) == KeyPair(pair.public, None)
    assert 'name = "vm1"' in path.read_text()


def test_server_keys_are_made_once_and_kept_0600(tmp_path, umask):
    umask(0)
    first = load_or_create_server_keys(tmp_path / "state", "app1")
    assert first.secret is not None and is_z85_key(first.public) and is_z85_key(first.secret)
    assert mode(tmp_path / "state" / "server.key_secret") == 0o600
    assert load_or_create_server_keys(tmp_path / "state", "app1") == first


def test_a_secret_key_file_made_loose_is_rewritten_0600(tmp_path):
    path = tmp_path / "vm1.key"
    secret = Path(str(path) + "_secret")
    secret.write_text("stale")
    secret.chmod(0o666)
    save_keypair(path, "vm1", KeyPair.generate())
    assert mode(secret) == 0o600


def test_an_unreadable_key_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "junk.key"
    path.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=f"^{path}: cannot read key"):
        load_keypair(path)
    with pytest.raises(ConfigError, match="missing.key: cannot read key"):
        load_keypair(tmp_path / "missing.key")


def test_z85_keys():
    pair = KeyPair.generate()
    assert is_z85_key(pair.public) and is_z85_key(pair.secret)
    assert not is_z85_key(pair.public[:-1])
    assert not is_z85_key(pair.public + "0")
    assert not is_z85_key("~" * 40)  # not in the Z85 alphabet
    assert not is_z85_key("")


@pytest.mark.parametrize("name", ["vm1", "a", "VM-1_x.y", "9" * 63])
def test_plain_names_are_accepted(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "_x", "a/b", "../vm1", "a b", "é", "9" * 64, "x\n"])
def test_names_that_are_not_plain_file_names_are_refused(name):
    with pytest.raises(UsageError, match="invalid client name"):
        check_name(name, "client name")


# --- KeyDirectory ---------------------------------------------------------------------------


@pytest.fixture
def keys():
    return [KeyPair.generate() for _ in range(3)]


def test_a_missing_directory_holds_no_keys_until_it_exists(tmp_path, keys):
    kd = KeyDirectory(tmp_path / "clients.d", "client")
    assert kd.names() == {} and kd.name_of(keys[0].public) is None
    kd.add("vm1", keys[0].public)  # creates the directory
    assert kd.name_of(keys[0].public) == "vm1"
    assert mode(tmp_path / "clients.d" / "vm1.key") == 0o644


def test_added_and_removed_keys_are_seen_by_the_same_object(tmp_path, keys):
    folder = tmp_path / "clients.d"
    folder.mkdir()
    kd = KeyDirectory(folder, "client")
    assert kd.names() == {}
    kd.add("vm1", keys[0].public)
    assert kd.name_of(keys[0].public) == "vm1"
    save_public_key(folder / "vm2.key", "vm2", keys[1].public)  # another writer: radium-admin enrol
    assert kd.name_of(keys[1].public) == "vm2"
    assert kd.names() == {"vm1": keys[0].public, "vm2": keys[1].public}
    (folder / "vm1.key").unlink()  # another writer removes it
    assert kd.name_of(keys[0].public) is None
    assert kd.remove("vm2") is True
    assert kd.name_of(keys[1].public) is None
    assert kd.remove("vm2") is False
    assert kd.names() == {}


def test_a_replaced_key_file_is_reread(tmp_path, keys):
    kd = KeyDirectory(tmp_path, "client")
    kd.add("vm1", keys[0].public)
    assert kd.name_of(keys[0].public) == "vm1"
    kd.add("vm1", keys[1].public)  # re-enrolled with a new key
    assert kd.name_of(keys[0].public) is None
    assert kd.name_of(keys[1].public) == "vm1"


def freeze_mtime(folder: Path):
    st = folder.stat()
    return lambda: os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_changes_are_seen_even_when_the_directory_time_does_not_move(tmp_path, keys):
    """Two changes within one tick of a coarse file-system clock leave the directory's mtime alone."""
    kd = KeyDirectory(tmp_path, "client")
    kd.add("vm1", keys[0].public)
    assert kd.name_of(keys[0].public) == "vm1"

    restore = freeze_mtime(tmp_path)
    kd.add("vm2", keys[1].public)
    restore()
    assert kd.name_of(keys[1].public) == "vm2"

    restore = freeze_mtime(tmp_path)
    kd.remove("vm1")
    restore()
    assert kd.name_of(keys[0].public) is None

    restore = freeze_mtime(tmp_path)
    kd.add("vm2", keys[2].public)
    restore()
    assert kd.name_of(keys[1].public) is None
    assert kd.name_of(keys[2].public) == "vm2"


def test_garbage_in_the_directory_is_ignored(tmp_path, keys):
    kd = KeyDirectory(tmp_path, "client")
    kd.add("vm1", keys[0].public)
    (tmp_path / "junk.key").write_bytes(b"\xff\xfe\x00 not a certificate")
    (tmp_path / "empty.key").write_bytes(b"")
    (tmp_path / "half.key").write_text("curve\n    public-ke")
    (tmp_path / "sub.key").mkdir()
    (tmp_path / "dangling.key").symlink_to(tmp_path / "nowhere")
    save_public_key(tmp_path / "vm2.key.bak", "vm2", keys[1].public)  # not a *.key file
    save_public_key(tmp_path / "README", "vm3", keys[2].public)
    assert kd.names() == {"vm1": keys[0].public}
    assert kd.name_of(keys[1].public) is None and kd.name_of(keys[2].public) is None
    kd.add("vm4", keys[1].public)  # and the good ones still come and go
    assert kd.names() == {"vm1": keys[0].public, "vm4": keys[1].public}


def test_a_directory_that_disappears_holds_no_keys(tmp_path, keys):
    folder = tmp_path / "admins.d"
    kd = KeyDirectory(folder, "admin")
    kd.add("ops", keys[0].public)
    assert kd.name_of(keys[0].public) == "ops"
    (folder / "ops.key").unlink()
    folder.rmdir()
    assert kd.name_of(keys[0].public) is None and kd.names() == {}


def test_bad_names_are_refused_before_touching_the_directory(tmp_path, keys):
    kd = KeyDirectory(tmp_path / "clients.d", "client")
    with pytest.raises(UsageError):
        kd.add("../escape", keys[0].public)
    with pytest.raises(UsageError):
        kd.remove("../escape")
    assert not (tmp_path / "clients.d").exists() and not (tmp_path / "escape.key").exists()
