"""The client's export policy (remoting/run/exports.py): secrets look absent to every
appliance request — lookups, listings, the first request's walk, chunk reads — whichever
way the path is spelt; ordinary files are served as before."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_run import PROJECT, run_hidden

from radium.remoting._config import ClientConfig, ClientSection
from radium.remoting._errors import ConfigError
from radium.remoting.client import withheld
from radium.remoting.run.exports import ExportPolicy
from radium.remoting.run.files import FileServer
from radium.remoting.run.fsproto import (
    Attr,
    DirListing,
    FsError,
    Lookup,
    Prefetch,
    ReadChunks,
    ReadDir,
    ReadLink,
    Tree,
)

SECRETS = {
    ".ssh/id_ed25519": "PRIVATE KEY",
    ".ssh/config": "Host *\n",
    ".gnupg/private-keys-v1.d/k.key": "gpg",
    ".aws/credentials": "aws",
    ".config/gcloud/credentials.db": "gcloud",
    ".kube/config": "kube",
    ".netrc": "machine x password y",
    ".docker/config.json": "{}",
    ".git-credentials": "https://u:p@host",
    ".config/radium/client.toml": "secret_key = 'x'",
}


def make_home(top: Path) -> Path:
    home = top / "home" / "u"
    for rel, text in {**SECRETS, "project/main.py": "print('hi')\n", "project/data/a.txt": "a"}.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(text)
    return home


def absent(reply) -> bool:
    return isinstance(reply, FsError) and reply.errno == errno.ENOENT


def names(listing) -> set[bytes]:
    assert isinstance(listing, DirListing), listing
    return {e.name for e in listing.entries}


def test_the_defaults_withhold_a_users_secrets_from_every_request(tmp_path):
    home = make_home(tmp_path)
    server = FileServer(tmp_path, exports=ExportPolicy.make([str(home)]))
    for rel in SECRETS:
        path = f"/home/u/{rel}".encode()
        assert absent(server.handle(Lookup(path=path, content=True))), rel
        assert absent(server.handle(ReadChunks(path=path, indexes=[0]))), rel
    for folder in (b"/home/u/.ssh", b"/home/u/.aws", b"/home/u/.config/gcloud"):
        assert absent(server.handle(ReadDir(path=folder))), folder
    listed = names(server.handle(ReadDir(path=b"/home/u", content=True)))
    assert listed == {b"project", b".config", b".kube", b".docker"}, listed  # folders that hold others
    assert names(server.handle(ReadDir(path=b"/home/u/.config"))) == set()
    tree = server.handle(Prefetch(paths=[b"/home/u"]))
    assert isinstance(tree, Tree)
    walked = {listing.path for listing in tree.listings}
    assert b"/home/u/project/data" in walked and not any(b".ssh" in p or b".aws" in p for p in walked)
    everything = {e.name for listing in tree.listings for e in listing.entries}
    assert not everything & {b"id_ed25519", b"credentials", b".netrc", b".git-credentials", b"client.toml"}
    # What is not a secret is served as before.
    attr = server.handle(Lookup(path=b"/home/u/project/main.py", content=True))
    assert isinstance(attr, Attr) and attr.data == b"print('hi')\n"


def test_the_systems_own_secrets_are_withheld_though_the_client_can_read_them():
    server = FileServer("/", exports=ExportPolicy.make([]))
    assert os.access("/etc/shadow", os.R_OK)  # the suite runs as root: only the policy stands between
    assert absent(server.handle(Lookup(path=b"/etc/shadow", content=True)))
    assert absent(server.handle(ReadChunks(path=b"/etc/shadow", indexes=[0])))
    assert b"shadow" not in names(server.handle(ReadDir(path=b"/etc")))
    assert isinstance(server.handle(Lookup(path=b"/etc/passwd", content=True)), Attr)


def test_symlinks_hard_links_and_bind_mounts_into_a_denied_place(tmp_path):
    home = make_home(tmp_path)
    project = home / "project"
    (project / "keys").symlink_to("../.ssh")
    (project / "deep").mkdir()
    (project / "deep" / "up").symlink_to("../../.ssh/id_ed25519")
    os.link(home / ".ssh" / "id_ed25519", project / "innocent.txt")
    server = FileServer(tmp_path, exports=ExportPolicy.make([str(home)]))
    assert absent(server.handle(Lookup(path=b"/home/u/project/keys/id_ed25519", content=True)))
    assert not isinstance(server.handle(ReadDir(path=b"/home/u/project/keys")), DirListing)  # a link
    assert absent(server.handle(Lookup(path=b"/home/u/project/innocent.txt", content=True)))
    assert b"innocent.txt" not in names(server.handle(ReadDir(path=b"/home/u/project")))
    # The symlink itself is served (its target is a name, not the key); following it is not.
    link = server.handle(ReadLink(path=b"/home/u/project/deep/up"))
    assert link.target == b"../../.ssh/id_ed25519"
    # ~/.ssh bound elsewhere (another path to the same folder): found by what it is.
    script = (
        "import os, sys\n"
        f"sys.path[:0] = {sys.path!r}\n"
        "from radium.remoting.run.exports import ExportPolicy\n"
        "from radium.remoting.run.files import FileServer\n"
        "from radium.remoting.run.fsproto import Lookup, ReadDir, FsError\n"
        f"os.makedirs({str(tmp_path / 'mnt')!r}, exist_ok=True)\n"
        f"os.system('mount --bind {home / '.ssh'} {tmp_path / 'mnt'}')\n"
        f"s = FileServer({str(tmp_path)!r}, exports=ExportPolicy.make([{str(home)!r}]))\n"
        "r = s.handle(Lookup(path=b'/mnt/id_ed25519', content=True))\n"
        "listing = s.handle(ReadDir(path=b'/'))\n"
        "print(type(r).__name__, getattr(r, 'errno', None), b'mnt' in {e.name for e in listing.entries})\n"
    )
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.stdout.split() == ["FsError", str(errno.ENOENT), "False"], out.stderr


def test_a_users_own_denial_and_an_exception(tmp_path):
    home = make_home(tmp_path)
    (home / "project" / "secrets").mkdir()
    (home / "project" / "secrets" / "token").write_text("t")
    policy = ExportPolicy.make(
        [str(home)], deny=[("~/project/secrets", "test")], allow=[("~/.ssh/config", "test")]
    )
    server = FileServer(tmp_path, exports=policy)
    assert absent(server.handle(Lookup(path=b"/home/u/project/secrets/token", content=True)))
    assert b"secrets" not in names(server.handle(ReadDir(path=b"/home/u/project")))
    # The exception: ~/.ssh is shown holding only it.
    assert b".ssh" in names(server.handle(ReadDir(path=b"/home/u")))
    assert names(server.handle(ReadDir(path=b"/home/u/.ssh"))) == {b"config"}
    config = server.handle(Lookup(path=b"/home/u/.ssh/config", content=True))
    assert isinstance(config, Attr) and config.data == b"Host *\n"
    assert absent(server.handle(Lookup(path=b"/home/u/.ssh/id_ed25519", content=True)))
    # An "exception" outside any denied place means nothing: it is no whitelist.
    assert not [r for r in ExportPolicy.make([str(home)], allow=[("~/project", "t")]).rules if not r.deny]
    with pytest.raises(ValueError, match="absolute path"):
        ExportPolicy.make([str(home)], deny=[("relative/path", "t")])


def test_a_run_cannot_read_the_clients_secrets_and_reads_the_rest(remote, tmp_path):
    home = f"{PROJECT}/home"
    extra = (
        f"mkdir -p {home}/.ssh {home}/proj && echo KEY > {home}/.ssh/id_rsa && echo ok > {home}/proj/main.txt"
        f" && ln -s ../.ssh {home}/proj/keys && export HOME={home}"
    )
    client = remote.client()
    config = client.env()["RADIUM_CONFIG"]  # the client's own configuration: its secret key
    assert "secret_key" in Path(config).read_text()
    probe = (
        f"for f in $HOME/.ssh/id_rsa $HOME/proj/keys/id_rsa {config} /etc/shadow; do "
        'cat "$f" 2>/dev/null && echo "LEAKED $f"; done; ls -A $HOME; cat $HOME/proj/main.txt'
    )
    out = run_hidden(remote, tmp_path, {}, "--", "sh", "-c", probe, extra=extra)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().split() == ["proj", "ok"], out.stdout
    shown = run_hidden(remote, tmp_path, {}, "--show-exports", extra=extra)
    assert shown.returncode == 0, shown.stderr.decode()
    assert f"{home}/.ssh  (default)" in shown.stdout.decode()


# --- tenants: the shared content store serves a client only what it sent ----------------------


class Liar(FileServer):
    """A modified client: it describes its own file with the hash of content it never had."""

    def __init__(self, root, claimed: bytes) -> None:
        super().__init__(root)
        self.claimed = claimed

    def _attr(self, st, real, *, content):  # type: ignore[no-untyped-def]
        attr = super()._attr(st, real, content=content)
        if real.endswith(b"claim.bin"):
            attr.chunks, attr.data = [self.claimed], None
        return attr


def _read_through_tree(server, store, owned, path: bytes, requests: list | None = None):
    """Read one file through a run's ClientTree (no mount needed), as the process would."""
    import pyfuse3
    import trio

    from radium.remoting.run.fs import ClientTree
    from radium.remoting.run.fsproto import decode_reply, decode_request, encode

    async def fetch(request):
        if requests is not None:
            requests.append(type(request).__name__)
        return decode_reply(encode(server.handle(decode_request(encode(request)))))

    async def read():
        tree = ClientTree(fetch, store, owned=owned)
        attr = await tree.stat_path(path)
        node = tree.nodes.by_ino[tree.nodes.by_path[path]]
        await tree.open(node.ino, os.O_RDONLY, None)
        try:
            return await tree.read(node.ino, 0, attr.size), tree
        except pyfuse3.FUSEError as exc:
            return exc.errno, tree

    return trio.run(read)


def test_a_client_naming_another_tenants_chunk_never_receives_its_content(tmp_path):
    from radium.remoting.run.cas import ContentStore
    from radium.remoting.run.fsproto import chunk_hash
    from radium.remoting.run.tenants import OwnedChunks
    from radium.remoting.run.warmtree import WarmTree

    secret = os.urandom(300_000)  # above INLINE_MAX: fetched as chunks
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "secret.bin").write_bytes(secret)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "claim.bin").write_bytes(os.urandom(len(secret)))
    store = ContentStore(tmp_path / "store", 1 << 30)
    tenants = tmp_path / "store" / "tenants"
    # Tenant A reads its file: the store holds the chunk, A's record says A sent it.
    owned_a = OwnedChunks(tenants / "a.chunks")
    data, _ = _read_through_tree(FileServer(tmp_path / "a"), store, owned_a, b"/secret.bin")
    assert data == secret
    owned_a.save()
    # A's next run is served from the store: nothing fetched again.
    requests: list[str] = []
    data, _ = _read_through_tree(
        FileServer(tmp_path / "a"), store, OwnedChunks(tenants / "a.chunks"), b"/secret.bin", requests
    )
    assert data == secret and "ReadChunks" not in requests, requests
    # Tenant B names A's chunk for a file of its own: it is asked for the bytes, which do not match.
    liar = Liar(tmp_path / "b", chunk_hash(secret))
    owned_b = OwnedChunks(tenants / "b.chunks")
    requests.clear()
    result, tree = _read_through_tree(liar, store, owned_b, b"/claim.bin", requests)
    assert result != secret and result == errno.EIO, type(result)
    assert "ReadChunks" in requests  # asked as for a cold chunk: the store's holding it tells nothing
    assert chunk_hash(secret) not in owned_b
    # Nor does B's warm tree take A's content.
    warm = WarmTree(tmp_path / "warm" / "b", 1 << 30)
    assert warm.share() and warm.claim()
    warm.grow(tree.nodes, tree.contents)
    assert not (tmp_path / "warm" / "b" / "tree" / "claim.bin").exists()


def test_the_operators_rules_apply_to_every_configuration_and_a_broken_file_stops_the_run(
    tmp_path, monkeypatch
):
    """The operator's /etc/radium/client.toml (here in tmp_path): its [exports] denial applies to
    a user's own configuration; a mistake in it is told, not skipped (its denials unknown)."""
    system = tmp_path / "etc-radium-client.toml"
    monkeypatch.setattr(withheld, "SYSTEM_CLIENT_CONFIG", system)
    (tmp_path / "data" / "customer").mkdir(parents=True)
    config = ClientConfig(client=ClientSection(name="vm1", public_key="", secret_key=""),
                          source=str(tmp_path / "user.toml"))  # fmt: skip
    env = {"HOME": str(tmp_path)}
    customer = os.fsencode(tmp_path / "data" / "customer")
    assert not withheld.export_policy(config, env).denies(customer)
    system.write_text(f'[appliances_are_not_read_here]\n[exports]\ndeny = ["{tmp_path}/data/*"]\n')
    assert withheld.export_policy(config, env).denies(customer)
    system.write_text('[exports]\ndeny = "/srv"\n')
    with pytest.raises(ConfigError, match=f"{system}: exports.deny"):
        withheld.export_policy(config, env)
    system.write_text('[exports]\ndeny = ["relative"]\n')
    with pytest.raises(ConfigError, match="give an absolute path"):
        withheld.export_policy(config, env)
