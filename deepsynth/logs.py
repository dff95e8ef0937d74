"""Log set-up shared by the entry scripts, the training workers and the Serve apps: text or JSON lines.

`log_format` is `text` (human lines, as before) or `json` (one JSON object per line, for Loki,
CloudWatch or Elastic). JSON comes from Ray's own formatter: `ray_init_logging("json")` gives
`ray.init` a `ray.LoggingConfig(encoding="JSON")`, which formats the root logger of the driver and
of every task and actor of the job (Ray adds job_id, worker_id, node_id, actor_id), and
`serve_logging_config("json")` is a deployment's `logging_config` (Serve adds request_id, route,
application, replica). Our own records go to the `deepsynth` logger and carry their context as
`extra` fields (run_name, step, rank, adapter), which both of Ray's formatters write out.
`configure_logging` routes that logger and scrubs secrets from every record the handlers write,
with the job API's rules (`deepsynth.jobs.secrets`).

    ray.init(**ray_init_logging(config.log_format))
    configure_logging(config.log_format, run_name=config.run_name)
    logger.info("step %d", step, extra={"step": step})
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import ray

from deepsynth.jobs.secrets import scrub, secret_values

LOG_FORMATS = ("text", "json")
LOGGER_NAME = "deepsynth"
SERVE_LOGGER_NAME = "ray.serve"  # Serve writes this logger's records to the replica's log file
# Ray's JSON records name the logger, so a pipeline can tell ours from Ray's.
EXTRA_STANDARD_ATTRS = ["name"]

logger = logging.getLogger(LOGGER_NAME)


def check_log_format(log_format: str) -> str:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {list(LOG_FORMATS)}, got {log_format!r}.")
    return log_format


def ray_init_logging(log_format: str) -> dict[str, Any]:
    """Keyword arguments for `ray.init`: none for text; Ray's JSON encoding for json.

    With json, workers' output is not copied to the driver: Ray would prefix each copied line
    with `(pid=...)`, so it would no longer be JSON. Each worker's records stay in its own log
    file under the session's logs/ folder, where Ray's log agents and pipelines collect them.
    """
    if check_log_format(log_format) == "text":
        return {}
    return {"logging_config": ray.LoggingConfig(encoding="JSON", log_level="INFO",
                                                additional_log_standard_attrs=EXTRA_STANDARD_ATTRS),
            "log_to_driver": False}


def serve_logging_config(log_format: str) -> dict[str, Any] | None:
    """A Serve deployment's `logging_config`: Serve's JSON encoding for json; None for text, which keeps
    Serve's default or the `logging_config` of the Serve config file."""
    if check_log_format(log_format) == "text":
        return None
    return {"encoding": "JSON", "log_level": "INFO", "additional_log_standard_attrs": EXTRA_STANDARD_ATTRS}


def configure_logging(log_format: str, secrets: frozenset[str] | None = None, **fields: Any) -> logging.Logger:
    """Route the `deepsynth` logger in this process and return it.

    text: its records are printed to stdout as bare messages, like the `print`s they replace.
    json: they propagate to the root logger, which `ray.init(**ray_init_logging("json"))` gave
    Ray's JSON handler (in the driver and in every worker of the job). Either way, every record
    the handlers write gets `fields` (e.g. run_name) unless it has its own, and is scrubbed of
    `secrets` (default: the secret-looking variables of this process's environment).
    """
    add_fields = record_filter(secret_values(os.environ) if secrets is None else secrets, fields)
    logger.setLevel(logging.INFO)
    if check_log_format(log_format) == "text":
        handler = next((h for h in logger.handlers if getattr(h, "deepsynth_stdout", False)), None)
        if handler is None:
            handler = logging.StreamHandler(CurrentStdout())
            handler.deepsynth_stdout = True
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        handlers = [handler]
        logger.propagate = False
    else:
        logger.propagate = True
        logging.captureWarnings(True)  # warnings become records too, not stray text lines
        handlers = logging.getLogger().handlers
    for handler in handlers:
        install_filter(handler, add_fields)
    return logger


def configure_serve_logging(secrets: frozenset[str] | None = None, **fields: Any) -> logging.Logger:
    """In a Serve replica: scrub and tag every record its log file gets; return the logger to use.

    Serve formats the `ray.serve` logger itself (text or JSON by the deployment's logging_config),
    so this only adds `fields` and the scrubbing to its handlers.
    """
    serve_logger = logging.getLogger(SERVE_LOGGER_NAME)
    add_fields = record_filter(secret_values(os.environ) if secrets is None else secrets, fields)
    for handler in serve_logger.handlers:
        install_filter(handler, add_fields)
    return serve_logger


class CurrentStdout:
    """Writes to whatever `sys.stdout` is at the time, so a redirected or captured stdout still gets the lines."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def record_filter(secrets: frozenset[str], fields: dict[str, Any]):
    """A handler filter: set `fields` the record lacks, and replace secrets in its message and text fields."""

    def add_fields(record: logging.LogRecord) -> bool:
        for key, value in fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        message = record.getMessage()
        clean = scrub(message, secrets)
        if clean != message:
            record.msg, record.args = clean, None
        for key, value in vars(record).items():
            if isinstance(value, str) and key not in ("msg", "name", "levelname", "pathname", "filename"):
                setattr(record, key, scrub(value, secrets))
        return True

    add_fields.deepsynth_filter = True
    return add_fields


def install_filter(handler: logging.Handler, add_fields) -> None:
    """Replace the handler's DeepSynth filter (a process configures its logging once, or again with new fields)."""
    for existing in [f for f in handler.filters if getattr(f, "deepsynth_filter", False)]:
        handler.removeFilter(existing)
    handler.addFilter(add_fields)
