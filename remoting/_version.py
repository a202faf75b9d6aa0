"""The version of Radium: the one place it is written (pyproject.toml reads it from here).

A constant rather than `importlib.metadata.version("radium")`, which costs every
`radium` command ~15 ms of imports at start-up.
"""

VERSION = "0.1.0"
