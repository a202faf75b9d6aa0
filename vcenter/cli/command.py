"""The command contract, and what every command is given: a `Context`.

A verb is a module (a file per verb, a folder per noun, as govc lays out its
commands) with:

    HELP: str                        one line, for --help
    FLAGS: tuple[str, ...]           shared flag sets it takes (`flags.GROUPS`: "output", "connection", ...)
    def add_arguments(parser)        optional: its own arguments
    def run(ctx: Context) -> Result  do it; return what to print (text or JSON), or raise a RadiumError

`run` parses what argparse could not, calls one operation of the library (the
faces `radium.vcenter`, `radium.remoting`, `radium.lab`: the same functions the
console and the Ansible modules call) and renders its result; it repeats no
step and no rule of the operation.  Errors take the same path as results
(`emit_error`), so `--json` errors are JSON too.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from radium.remoting import Result, UsageError

if TYPE_CHECKING:
    from radium.vcenter import ConnectionSettings, Session

    from .progress import ProgressView

__all__ = ["Context", "Verb"]


class Verb(Protocol):
    HELP: str
    FLAGS: tuple[str, ...]

    def run(self, ctx: Context) -> Result: ...


class Context:
    """One invocation: its arguments, and at most one vCenter session, opened on first use."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._session: Session | None = None
        self._password: str | None = None
        self._progress: ProgressView | None = None

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def read_password(self) -> str | None:
        """The password from --password-stdin (read once), else None."""
        if not getattr(self.args, "password_stdin", False):
            return None
        if self._password is None:
            line = sys.stdin.readline()
            self._password = line.rstrip("\r\n")
            if not self._password:
                raise UsageError("--password-stdin: standard input held no password")
        return self._password

    @staticmethod
    def prompt() -> Callable[[str], str] | None:
        """A password prompt when a person is at a terminal, else None."""
        if sys.stdin.isatty() and sys.stderr.isatty():
            return lambda text: getpass.getpass(text)
        return None

    def settings(self, *, need_password: bool = True, use_profiles: bool = True) -> ConnectionSettings:
        """The connection settings from this command's flags, the environment and the profile."""
        from radium import vcenter

        a = self.args
        return vcenter.resolve(
            url=getattr(a, "url", None),
            user=getattr(a, "user", None),
            thumbprint=getattr(a, "thumbprint", None),
            ca=getattr(a, "ca", None),
            insecure=getattr(a, "insecure", None),
            profile=getattr(a, "profile", None),
            password=self.read_password() if need_password else None,
            ask_password=self.prompt() if need_password else None,
            need_password=need_password,
            use_profiles=use_profiles,
        )

    def session(self) -> Session:
        """The invocation's vCenter session (logged in once, logged out by `close`)."""
        if self._session is None:
            from radium import vcenter

            self._session = vcenter.connect(self.settings())
        return self._session

    @property
    def progress(self) -> ProgressView:
        """The operation's progress sink: its events drawn on standard error."""
        if self._progress is None:
            from .progress import ProgressView

            self._progress = ProgressView()
        return self._progress

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
        if self._session is not None:
            self._session.close()
            self._session = None
