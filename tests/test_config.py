"""radiumd's and the client's TOML configuration: validation, messages, paths, saving."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from radium.remoting import _config
from radium.remoting._config import (
    ConfigError,
    client_config_path,
    dump_toml,
    load_client_config,
    load_daemon_config,
    save_client_config,
)
from radium.remoting._keys import KeyPair

RADIUMD = Path(sys.executable).parent / "radiumd"


def write(folder: Path, text: str, name: str = "radiumd.toml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def daemon_error(tmp_path: Path, text: str) -> tuple[Path, ConfigError]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_daemon_config(path)
    return path, exc.value


# --- radiumd: values ------------------------------------------------------------------


def test_an_empty_file_gives_the_defaults(tmp_path):
    path = write(tmp_path, "")
    config = load_daemon_config(path)
    assert config.source == str(path)
    assert config.server.listen == "tcp://0.0.0.0:7450"
    assert config.server.heartbeat_interval == 2.0 and config.server.lease_timeout == 6.0
    assert config.server.state_dir == "/var/lib/radium"
    assert config.metrics.enabled is True and config.metrics.listen == "127.0.0.1:9450"
    assert config.devices.backends == ["nvml", "opencl"]
    assert config.log.level == "info" and config.log.format == "json"


def test_a_full_file_is_read(tmp_path):
    path = write(
        tmp_path,
        """
[server]
name = "app7"
listen = "tcp://[::1]:7451"
heartbeat_interval = 1
lease_timeout = 4.5
max_message_bytes = 2048

[metrics]
enabled = false
listen = "[::1]:9451"

[devices]
backends = ["opencl"]
exclude = ["opencl:0:1"]
health_interval = 5

[log]
level = "debug"
format = "text"
""",
    )
    c = load_daemon_config(path)
    assert (c.server.name, c.server.listen) == ("app7", "tcp://[::1]:7451")
    assert c.server.heartbeat_interval == 1.0 and c.server.lease_timeout == 4.5
    assert c.server.max_message_bytes == 2048
    assert c.metrics.enabled is False and c.metrics.listen == "[::1]:9451"
    assert c.devices.backends == ["opencl"] and c.devices.exclude == ["opencl:0:1"]
    assert c.devices.health_interval == 5.0
    assert (c.log.level, c.log.format) == ("debug", "text")


def test_with_no_file_at_the_default_path_the_defaults_are_used(tmp_path, monkeypatch):
    monkeypatch.setattr(_config, "DEFAULT_DAEMON_CONFIG", tmp_path / "absent.toml")
    config = load_daemon_config(None)
    assert config.source == "" and config.server.lease_timeout == 6.0


def test_with_a_file_at_the_default_path_it_is_read(tmp_path, monkeypatch):
    path = write(tmp_path, '[server]\nname = "from-default"\n')
    monkeypatch.setattr(_config, "DEFAULT_DAEMON_CONFIG", path)
    config = load_daemon_config(None)
    assert config.source == str(path) and config.server.name == "from-default"


# --- radiumd: errors name the file and the key ----------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        ("bogus = 1", "bogus"),
        ("source = 'x'", "source"),
        ("[server]\nbogus = 1", "server.bogus"),
        ("[server]\nport = 7450", "server.port"),
        ("[metrics]\nbogus = true", "metrics.bogus"),
        ("[devices]\nbogus = []", "devices.bogus"),
        ("[log]\nbogus = 'x'", "log.bogus"),
        ("[surprise]\nx = 1", "surprise"),
    ],
)
def test_an_unknown_key_is_named_with_its_file(tmp_path, text, key):
    path, err = daemon_error(tmp_path, text)
    assert str(err) == f"{path}: {key}: unknown key"
    assert str(err).endswith(f"radiumd.toml: {key}: unknown key")
    assert err.detail == {"file": str(path), "key": key}
    assert err.exit_code == 2


@pytest.mark.parametrize(
    "text, key, what",
    [
        ("[server]\nlease_timeout = 'soon'", "server.lease_timeout", "expected `float`, got `str`"),
        ("[server]\nstate_dir = 3", "server.state_dir", "expected `str`, got `int`"),
        ("[server]\nmax_message_bytes = 1.5", "server.max_message_bytes", "expected `int`, got `float`"),
        ("[metrics]\nenabled = 'yes'", "metrics.enabled", "expected `bool`, got `str`"),
        ("[devices]\nexclude = 'opencl:0:0'", "devices.exclude", "expected `array`, got `str`"),
        ("[devices]\nexclude = [1]", "devices.exclude.0", "expected `str`, got `int`"),
        ("server = 3", "server", "expected `object`, got `int`"),
        ("[[server]]\nname = 'x'", "server", "expected `object`, got `array`"),
    ],
)
def test_a_wrong_type_names_the_key_and_the_expected_type(tmp_path, text, key, what):
    path, err = daemon_error(tmp_path, text)
    assert str(err) == f"{path}: {key}: {what}"
    assert err.detail["key"] == key


@pytest.mark.parametrize(
    "text, key",
    [
        ("[log]\nlevel = 'loud'", "log.level"),
        ("[log]\nformat = 'xml'", "log.format"),
        ("[devices]\nbackends = ['nvml', 'cuda']", "devices.backends.1"),
    ],
)
def test_a_value_outside_its_choices_is_refused(tmp_path, text, key):
    path, err = daemon_error(tmp_path, text)
    assert str(err).startswith(f"{path}: {key}: invalid enum value")


@pytest.mark.parametrize("value", ["0", "0.0", "-1", "-0.5"])
@pytest.mark.parametrize("key", ["lease_timeout", "heartbeat_interval"])
def test_times_must_be_positive(tmp_path, key, value):
    path, err = daemon_error(tmp_path, f"[server]\n{key} = {value}")
    assert str(err) == f"{path}: server.{key}: expected `float` > 0.0"


def test_health_interval_must_be_positive(tmp_path):
    path, err = daemon_error(tmp_path, "[devices]\nhealth_interval = 0")
    assert str(err) == f"{path}: devices.health_interval: expected `float` > 0.0"


def test_a_tiny_message_limit_is_refused(tmp_path):
    path, err = daemon_error(tmp_path, "[server]\nmax_message_bytes = 1023")
    assert str(err) == f"{path}: server.max_message_bytes: expected `int` >= 1024"


@pytest.mark.parametrize("timeout, interval", [(2, 2), (1, 2), (5, 10.5)])
def test_lease_timeout_must_outlast_the_heartbeat_interval(tmp_path, timeout, interval):
    path, err = daemon_error(
        tmp_path, f"[server]\nlease_timeout = {timeout}\nheartbeat_interval = {interval}"
    )
    assert str(err).startswith(f"{path}: server.lease_timeout: must be longer than server.heartbeat_interval")


def test_a_lease_timeout_just_over_the_interval_is_fine(tmp_path):
    path = write(tmp_path, "[server]\nlease_timeout = 2.5\nheartbeat_interval = 2")
    assert load_daemon_config(path).server.lease_timeout == 2.5


def test_the_wait_for_files_at_a_runs_end_is_a_least_and_a_most(tmp_path):
    path = write(tmp_path, "[run]\ncomplete_at_exit = [0.5, 3]")
    assert load_daemon_config(path).run.complete_at_exit == (0.5, 3.0)
    path, err = daemon_error(tmp_path, "[run]\ncomplete_at_exit = [2, 1]")
    assert str(err).startswith(f"{path}: run.complete_at_exit: the least (2 s) is more than the most (1 s)")
    path, err = daemon_error(tmp_path, "[run]\ncomplete_at_exit = [1]")
    assert "run.complete_at_exit" in str(err)


@pytest.mark.parametrize(
    "listen",
    [
        "0.0.0.0:7450",
        "tcp://0.0.0.0",
        "tcp://0.0.0.0:",
        "tcp://:7450",
        "tcp://host:port",
        "tcp://host:99999",
        "tcp://host:123456",
        "udp://host:7450",
        "tcp://host:7450/x",
        "tcp://two words:7450",
        "ipc:///run/radium.sock",
    ],
)
def test_a_bad_listen_address_is_refused(tmp_path, listen):
    path, err = daemon_error(tmp_path, f'[server]\nlisten = "{listen}"')
    assert str(err) == f"{path}: server.listen: expected tcp://HOST:PORT, got {listen!r}"


@pytest.mark.parametrize(
    "listen",
    ["tcp://0.0.0.0:7450", "tcp://*:7450", "tcp://app1.lab:1", "tcp://[::1]:7450", "tcp://[fe80::1]:65535"],
)
def test_good_listen_addresses_are_accepted(tmp_path, listen):
    assert load_daemon_config(write(tmp_path, f'[server]\nlisten = "{listen}"')).server.listen == listen


@pytest.mark.parametrize("listen", ["localhost", "9450", ":9450", "tcp://127.0.0.1:9450", "127.0.0.1:70000"])
def test_a_bad_metrics_address_is_refused(tmp_path, listen):
    path, err = daemon_error(tmp_path, f'[metrics]\nlisten = "{listen}"')
    assert str(err) == f"{path}: metrics.listen: expected HOST:PORT, got {listen!r}"


# --- radiumd: files ---------------------------------------------------------------------


def test_relative_paths_are_taken_from_the_files_folder(tmp_path, monkeypatch):
    etc = tmp_path / "etc" / "radium"
    write(
        etc,
        f"""[server]
state_dir = "state"
clients_dir = "../clients.d"
admins_dir = "{tmp_path / "abs" / "admins.d"}"
""",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for path in (etc / "radiumd.toml", Path("../etc/radium/radiumd.toml")):
        s = load_daemon_config(path).server
        assert s.state_dir == str((etc / "state").resolve())
        assert s.clients_dir == str((tmp_path / "etc" / "clients.d").resolve())
        assert s.admins_dir == str(tmp_path / "abs" / "admins.d")


def test_a_missing_file_says_so(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        load_daemon_config(path)
    assert str(exc.value) == f"{path}: no such file"


def test_a_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_daemon_config(tmp_path)
    assert str(exc.value) == f"{tmp_path}: is a directory, not a file"


def test_invalid_toml_says_so_with_the_place(tmp_path):
    path, err = daemon_error(tmp_path, "[server\nname = 'x'")
    assert str(err).startswith(f"{path}: not valid TOML: ")
    assert "line 1" in str(err)


def test_a_file_that_is_not_utf8_is_not_valid_toml(tmp_path):
    path = tmp_path / "radiumd.toml"
    path.write_bytes(b'[server]\nname = "\xff\xfe"\n')
    with pytest.raises(ConfigError) as exc:
        load_daemon_config(path)
    assert str(exc.value).startswith(f"{path}: not valid TOML")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_says_permission_denied(tmp_path):
    path = write(tmp_path, "")
    path.chmod(0)
    with pytest.raises(ConfigError) as exc:
        load_daemon_config(path)
    assert str(exc.value) == f"{path}: permission denied"


# --- radiumd --check, as a process ------------------------------------------------------


def check(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RADIUMD), "--check", "--config", str(config)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "text, words",
    [
        ("[server]\nbogus = 1\n", "radiumd.toml: server.bogus: unknown key"),
        ("[server]\nlease_timeout = 0\n", "radiumd.toml: server.lease_timeout: expected `float` > 0.0"),
        ('[metrics]\nlisten = "localhost"\n', "radiumd.toml: metrics.listen: expected HOST:PORT"),
        (None, "radiumd.toml: is a directory, not a file"),
    ],
)
def test_radiumd_check_reports_a_bad_config_in_one_line(tmp_path, text, words):
    if text is None:
        (tmp_path / "radiumd.toml").mkdir()
        path = tmp_path / "radiumd.toml"
    else:
        path = write(tmp_path, text)
    out = check(path)
    assert out.returncode == 2
    assert out.stdout == ""
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"radiumd: {path}: ")
    assert words in lines[0]


def test_radiumd_check_accepts_a_good_config(tmp_path):
    path = write(tmp_path, '[server]\nname = "app1"\nlisten = "tcp://127.0.0.1:7450"\n')
    out = check(path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"radiumd: {path}: configuration is valid"
    assert out.stderr == ""


def test_radiumd_check_reports_a_missing_file(tmp_path):
    out = check(tmp_path / "missing.toml")
    assert out.returncode == 2
    assert out.stderr == f"radiumd: {tmp_path / 'missing.toml'}: no such file\n"


# --- the client -----------------------------------------------------------------------------

CLIENT = KeyPair.generate()
APPLIANCE = KeyPair.generate()


def client_toml(extra_client: str = "", appliances: str | None = None) -> str:
    if appliances is None:
        appliances = f"""
[[appliances]]
name = "app1"
address = "tcp://10.0.0.5:7450"
public_key = "{APPLIANCE.public}"

[[appliances]]
name = "app2"
address = "tcp://[fd00::2]:7450"
public_key = "{APPLIANCE.public}"
"""
    return f"""[client]
name = "vm1"
public_key = "{CLIENT.public}"
secret_key = "{CLIENT.secret}"
{extra_client}
{appliances}"""


def client_error(tmp_path: Path, text: str) -> tuple[Path, ConfigError]:
    path = write(tmp_path, text, "client.toml")
    with pytest.raises(ConfigError) as exc:
        load_client_config(path)
    return path, exc.value


def test_a_client_config_is_read(tmp_path):
    path = write(tmp_path, client_toml(), "client.toml")
    c = load_client_config(path)
    assert c.source == str(path)
    assert c.client.name == "vm1"
    assert c.keys == KeyPair(CLIENT.public, CLIENT.secret)
    assert [a.name for a in c.appliances] == ["app1", "app2"]
    assert c.appliance("app2").address == "tcp://[fd00::2]:7450"
    assert c.appliance("app1").public_key == APPLIANCE.public


def test_asking_for_an_unconfigured_appliance_lists_the_configured_ones(tmp_path):
    c = load_client_config(write(tmp_path, client_toml(), "client.toml"))
    with pytest.raises(ConfigError) as exc:
        c.appliance("app3")
    assert str(exc.value) == f"no appliance named 'app3' in {c.source} (configured: app1, app2)"
    empty = load_client_config(write(tmp_path, client_toml(appliances=""), "empty.toml"))
    with pytest.raises(ConfigError, match=r"\(configured: none\)"):
        empty.appliance("app1")


@pytest.mark.parametrize(
    "text, key",
    [
        (client_toml() + "\nbogus = 1\n", "appliances.1.bogus"),  # TOML: it lands in the last table
        ("bogus = 1\n" + client_toml(), "bogus"),
        (client_toml(extra_client="colour = 'red'"), "client.colour"),
        (
            client_toml(
                appliances="[[appliances]]\nname = 'a'\naddress = 'tcp://h:1'\npublic_key = 'k'\nport = 1"
            ),
            "appliances.0.port",
        ),
    ],
)
def test_an_unknown_client_key_is_named_with_its_file(tmp_path, text, key):
    path, err = client_error(tmp_path, text)
    assert str(err) == f"{path}: {key}: unknown key"


def test_a_client_config_without_a_client_section_says_what_is_missing(tmp_path):
    path, err = client_error(tmp_path, "appliances = []\n")
    assert str(err).startswith(f"{path}: ")
    assert "missing required field `client`" in str(err)


def test_a_client_section_without_a_key_names_it(tmp_path):
    path, err = client_error(tmp_path, f'[client]\nname = "vm1"\npublic_key = "{CLIENT.public}"\n')
    assert str(err) == f"{path}: client: object missing required field `secret_key`"


@pytest.mark.parametrize(
    "field, value",
    [
        ("public_key", "short"),
        ("secret_key", "x" * 39),
        ("public_key", "~" * 40),
        ("secret_key", CLIENT.secret + "A"),
    ],
)
def test_client_keys_must_be_z85_curve_keys(tmp_path, field, value):
    text = client_toml().replace(getattr(CLIENT, field.split("_")[0]), value, 1)
    path, err = client_error(tmp_path, text)
    assert str(err) == f"{path}: client.{field}: expected a 40-character Z85 CURVE key"


def test_an_appliance_with_a_bad_address_is_named_by_its_index(tmp_path):
    text = client_toml().replace("tcp://[fd00::2]:7450", "fd00::2")
    path, err = client_error(tmp_path, text)
    assert str(err) == f"{path}: appliances.1.address: expected tcp://HOST:PORT, got 'fd00::2'"


def test_an_appliance_with_a_bad_key_is_named_by_its_index(tmp_path):
    apps = f"""[[appliances]]
name = "app1"
address = "tcp://h:7450"
public_key = "{APPLIANCE.public}"

[[appliances]]
name = "app2"
address = "tcp://h:7450"
public_key = "not-a-key"
"""
    path, err = client_error(tmp_path, client_toml(appliances=apps))
    assert str(err) == f"{path}: appliances.1.public_key: expected a Z85 CURVE key"


def test_a_missing_client_config_says_how_to_get_one(tmp_path):
    path = tmp_path / "client.toml"
    with pytest.raises(ConfigError) as exc:
        load_client_config(path)
    assert str(exc.value).startswith(f"{path}: no client configuration.")
    assert "radium configure --bundle FILE" in str(exc.value)


# --- where the client looks --------------------------------------------------------------


@pytest.fixture
def no_client_config(tmp_path, monkeypatch):
    monkeypatch.delenv("RADIUM_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("RADIUM_LAB_DIR", str(tmp_path / "lab"))
    monkeypatch.setattr(_config, "SYSTEM_CLIENT_CONFIG", tmp_path / "etc" / "client.toml")
    return tmp_path


def test_client_config_path_prefers_radium_config(no_client_config, monkeypatch):
    tmp = no_client_config
    write(tmp / "xdg" / "radium", "", "client.toml")
    monkeypatch.setenv("RADIUM_CONFIG", str(tmp / "explicit.toml"))
    assert client_config_path() == tmp / "explicit.toml"


def test_client_config_path_order(no_client_config):
    tmp = no_client_config
    user = tmp / "xdg" / "radium" / "client.toml"
    assert client_config_path() == user  # nothing exists: where `configure` writes
    write(tmp / "lab", "", "client.toml")
    assert client_config_path() == tmp / "lab" / "client.toml"
    write(tmp / "etc", "", "client.toml")
    assert client_config_path() == tmp / "etc" / "client.toml"
    write(tmp / "xdg" / "radium", "", "client.toml")
    assert client_config_path() == user


# --- saving ------------------------------------------------------------------------------------


def test_save_client_config_writes_0600_and_reads_back(tmp_path):
    source = load_client_config(write(tmp_path, client_toml(), "in.toml"))
    out = tmp_path / "home" / "radium" / "client.toml"
    out.parent.mkdir(parents=True)
    out.write_text("old")
    out.chmod(0o644)
    old_umask = os.umask(0)
    try:
        save_client_config(source, out)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    again = load_client_config(out)
    assert again.client == source.client and again.appliances == source.appliances
    assert again.source == str(out)
    assert "source" not in out.read_text()


def test_dump_toml_leaves_out_the_source(tmp_path):
    c = load_daemon_config(write(tmp_path, '[server]\nname = "x"\n'))
    text = dump_toml(c)
    assert "source" not in text and 'name = "x"' in text
    again = load_daemon_config(write(tmp_path, text, "again.toml"))
    assert again.server == c.server
