"""The link as a run sees it: `python -m radium.remoting.bench.link`, under `radium run`.

`radium bench` measures the channel its remote runs use — the client, radiumd, the run's
supervisor, the process's standard streams — with this program at the far end.  It reads
commands on stdin, one a line:

    ping            answered "pong" at once (round trips, timed by the client)
    take N          N bytes follow on stdin; answered "took N SECONDS" once all arrived
    give N          N bytes written to stdout at once (after a line "giving N")
    quit            exit 0
"""

from __future__ import annotations

import os
import sys
import time

CHUNK = 1 << 20


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    block = b"\0" * CHUNK
    while line := stdin.readline():
        word, _, arg = line.decode().strip().partition(" ")
        if word == "ping":
            stdout.write(b"pong\n")
        elif word == "take":
            left, started = int(arg), time.perf_counter()
            while left > 0:
                got = stdin.read(min(left, CHUNK))
                if not got:
                    return 1
                left -= len(got)
            stdout.write(f"took {arg} {time.perf_counter() - started:.6f}\n".encode())
        elif word == "give":
            left = int(arg)
            stdout.write(f"giving {left}\n".encode())
            while left > 0:
                n = min(left, CHUNK)
                stdout.write(block[:n])
                left -= n
        elif word == "quit":
            stdout.flush()
            return 0
        stdout.flush()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
