"""The installed version of Radium."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("radium")
except PackageNotFoundError:  # running from a source tree that is not installed
    VERSION = "0+unknown"
