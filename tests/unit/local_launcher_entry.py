"""A stand-in for `miniflow_worker.runner.main` used by the local launcher tests."""

from __future__ import annotations

import os
import socket
import struct
import sys
import time

from miniflow.launchers.local_fork import RELAY_FD_ENV

PREFORKED: list[str] = []


def prefork(env: dict[str, str], dag_file: str | None = None) -> None:
    """A forkserver's prefork hook: what it records, the forked child inherits."""
    PREFORKED.append(env.get("ENTRY_MARK", ""))


def echo(message: bytes) -> bytes:
    """A relay hook: answers what it is sent (to b"preforked?": the marks `prefork` saw
    in the forkserver before the relay process was forked)."""
    if message == b"preforked?":
        return " ".join(PREFORKED).encode()
    return message


def _ask_relay(message: bytes) -> bytes:
    header = struct.Struct("!I")
    with socket.socket(fileno=int(os.environ[RELAY_FD_ENV])) as sock:
        sock.sendall(header.pack(len(message)) + message)
        (size,) = header.unpack(sock.recv(header.size, socket.MSG_WAITALL))
        return sock.recv(size, socket.MSG_WAITALL)


def main(argv: list[str]) -> int:
    """Print the argv and a marker variable, optionally wait, return ENTRY_CODE.

    ENTRY_PROOF: a file to append one line to (one line per execution);
    ENTRY_SHOW_ENV: print the names of the MINIFLOW_* variables it was given;
    ENTRY_WAIT_FOR: wait until that file exists;
    ENTRY_SHOW_PREFORK: print the marks `prefork` saw in the forkserver before this fork;
    ENTRY_ASK_RELAY: print the marks its relay process inherited.
    """
    print("entry argv:", " ".join(argv))
    print("entry mark:", os.environ.get("ENTRY_MARK", ""), file=sys.stderr)
    proof = os.environ.get("ENTRY_PROOF")
    if proof:
        with open(proof, "a") as f:
            f.write(f"ran {os.getpid()}\n")
    if os.environ.get("ENTRY_SHOW_ENV"):
        names = sorted(k for k in os.environ if k.startswith("MINIFLOW_"))
        print("entry env:", " ".join(names))
    if os.environ.get("ENTRY_SHOW_PREFORK"):
        print("entry preforked:", " ".join(PREFORKED))
    if os.environ.get("ENTRY_ASK_RELAY"):
        print("entry relay preforked:", _ask_relay(b"preforked?").decode())
    wait_for = os.environ.get("ENTRY_WAIT_FOR")
    if wait_for:
        print("entry waiting", flush=True)
        while not os.path.exists(wait_for):
            time.sleep(0.02)
    return int(os.environ.get("ENTRY_CODE", "0"))
