"""Secrets the job API must never echo: which values count as secret, and scrubbing them from text.

The API's own process inherits the cluster's environment, which holds `HF_TOKEN`, Ray's auth
token and cloud credentials. Jobs get those from the node's environment too, never through the
API, so no secret is ever copied into a Ray runtime_env, job metadata or a job record. As defence
in depth, every log or error text the API returns passes through `scrub`, which replaces known
secret values and anything shaped like a Hugging Face token.

    secrets = secret_values(os.environ, extra=[api_token])
    safe = scrub(log_text, secrets)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

REDACTED = "[redacted]"

# Variable names whose values are secrets. Matched on the upper-cased name.
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)")
# Hugging Face user/org tokens, whether or not we know the value.
HF_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{16,}")
# Shorter values are too likely to occur in ordinary text ("1", "true") to be scrubbed safely.
MIN_SECRET_LENGTH = 8


def secret_values(environ: Mapping[str, str], extra: Iterable[str | None] = ()) -> frozenset[str]:
    """Values of the secret-looking variables in `environ`, plus `extra` (e.g. the API token)."""
    values = {value for name, value in environ.items() if SECRET_NAME.search(name.upper())}
    values.update(value for value in extra if value)
    return frozenset(value for value in values if len(value) >= MIN_SECRET_LENGTH)


def scrub(text: str, secrets: Iterable[str]) -> str:
    # Longest first, so a secret that contains another is replaced whole.
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return HF_TOKEN_SHAPE.sub(REDACTED, text)


def contains_secret(value: object, secrets: Iterable[str]) -> bool:
    """Whether a (nested) request value carries a known secret or an HF-token-shaped string."""
    text = repr(value)
    return any(secret in text for secret in secrets) or bool(HF_TOKEN_SHAPE.search(text))
