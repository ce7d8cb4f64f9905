"""Helpers for the operating tests: free ports, polling the live endpoints."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

from tests.support import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def stats(base: str) -> dict:
    return json.loads(get(base + "/stats")[1])


def wait_for(predicate, timeout: float = 10.0, every: float = 0.05):
    return wait_until(predicate, timeout, every)
