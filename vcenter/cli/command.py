"""The command contract, and what every command is given: a `Context`.

A verb is a module (a file per verb, a folder per noun, as govc lays out its
commands) with:

    HELP: str                        one line, for --help
    FLAGS: tuple[str, ...]           shared flag sets it takes (`flags.GROUPS`: "output", "connection", ...)
    def add_arguments(parser)        optional: its own arguments
    def run(ctx: Context) -> Result  do it; return what to print (text or JSON), or raise a RadiumError

Errors take the same path as results (`emit_error`), so `--json` errors are JSON too.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from radium.remoting._errors import UsageError
from radium.remoting.cli.output import Result

if TYPE_CHECKING:
    from radium.vcenter.connection import Session
    from radium.vcenter.settings import ConnectionSettings
    from radium.vcenter.tasks import TaskProgress

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
        from radium.vcenter import settings

        a = self.args
        return settings.resolve(
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
            from radium.vcenter.connection import connect

            self._session = connect(self.settings())
        return self._session

    def progress(self, stream: Iterable[TaskProgress]) -> TaskProgress | None:
        """Show a task's progress on standard error; return its last report."""
        from .progress import render

        return render(stream)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
