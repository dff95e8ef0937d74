"""Waiting for a server-side state in tests: poll until it holds, or fail saying what was last seen."""

import time

import requests


def wait_for(fetch, done, timeout: float, what: str, describe=lambda: ""):
    """`fetch()` every 0.5 s until `done` accepts its value (returned); after `timeout` s, an AssertionError
    naming `what`, the last value and `describe()`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fetch()
        if done(value):
            return value
        time.sleep(0.5)
    last = value.text if isinstance(value, requests.Response) else value
    raise AssertionError(f"timed out waiting for {what}; last: {last}\n{describe()}")
