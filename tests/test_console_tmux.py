"""The console as a person uses it: `radium-admin tui` in a terminal (tmux), on the lab.

tmux runs a shell in a 100x30 terminal; the test types into it (`send-keys`) and
reads the screen (`capture-pane`) as a person would: start the console on the lab
with nothing configured, find the simulator's GPUs in the hosts view, filter them,
open the deploy form and cancel it, quit, and find the shell's terminal restored.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from support import BIN
from test_lab import lab_env  # noqa: F401 (the lab's environment, torn down after)

pytestmark = pytest.mark.timeout(240)

TMUX = shutil.which("tmux")


class Terminal:
    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.env = env
        subprocess.run(
            [TMUX, "new-session", "-d", "-s", name, "-x", "100", "-y", "30", "bash --norc --noprofile"],
            env=env,
            check=True,
        )
        self.keys("export PS1='ready$ '", "Enter")

    def keys(self, *keys: str) -> None:
        subprocess.run([TMUX, "send-keys", "-t", self.name, *keys], check=True)

    def screen(self) -> str:
        out = subprocess.run([TMUX, "capture-pane", "-p", "-t", self.name], capture_output=True, text=True)
        return out.stdout

    def alternate_screen(self) -> bool:
        argv = [TMUX, "display-message", "-p", "-t", self.name, "#{alternate_on}"]
        out = subprocess.run(argv, capture_output=True, text=True)
        return out.stdout.strip() == "1"

    def wait_for(self, text: str, timeout: float = 30.0, gone: bool = False) -> str:
        """The screen, once `text` is on it (or, with `gone`, once it is not)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if (text in screen) != gone:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} {'still' if gone else 'not'} on screen; it shows:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run([TMUX, "kill-session", "-t", self.name], capture_output=True)


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
def test_the_console_in_a_terminal_on_the_lab(lab_env):  # noqa: F811
    up = subprocess.run(
        [str(BIN / "radium-admin"), "lab", "up"], env=lab_env, capture_output=True, text=True, timeout=180
    )
    assert up.returncode == 0, up.stdout + up.stderr
    if "vCenter        none" in up.stdout:
        pytest.skip("the lab has no vCenter simulator here: " + up.stdout)
    env = dict(lab_env, PATH=f"{BIN}:{os.environ['PATH']}", TERM="xterm-256color")
    term = Terminal(f"radium-tui-{os.getpid()}", env)
    try:
        term.wait_for("ready$")
        term.keys("radium-admin tui", "Enter")
        screen = term.wait_for("Tesla V100")  # the lab's simulator: the hosts view, filled
        assert "Hosts" in screen and "Appliances" in screen and "MI100" in screen
        assert term.alternate_screen()

        term.keys("/")
        term.wait_for("filter: rows containing")  # a person types once the box is there
        term.keys("MI100")
        screen = term.wait_for("Tesla V100", gone=True)
        assert "MI100" in screen
        term.keys("Escape")
        term.wait_for("Tesla V100")

        term.keys("d")
        screen = term.wait_for("Deploy an appliance")
        term.keys("Escape")
        term.wait_for("Deploy an appliance", gone=True)

        term.keys("2")
        term.wait_for("lab-appliance")

        term.keys("q")
        screen = term.wait_for("ready$ ", timeout=15)
        deadline = time.monotonic() + 10
        while term.alternate_screen() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not term.alternate_screen()  # the shell's own screen is back
        term.keys("echo still-$((40+2))", "Enter")
        term.wait_for("still-42")  # and it echoes and reads as before
    finally:
        term.close()
