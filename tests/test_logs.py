"""deepsynth.logs: text and JSON log set-up, context fields and secret scrubbing (no Ray cluster needed)."""

import contextlib
import io
import logging
import logging.handlers

import pytest
import ray

from deepsynth.jobs.secrets import REDACTED
from deepsynth.logs import (
    check_log_format,
    configure_logging,
    install_filter,
    ray_init_logging,
    record_filter,
    serve_logging_config,
)

SECRET = "s3cret-value-of-the-api"
HF_SHAPED = "hf_" + "Ab1" * 8


def test_log_format_is_text_or_json_and_a_typo_names_the_flag():
    assert check_log_format("json") == "json"
    with pytest.raises(ValueError, match=r"log_format must be one of \['text', 'json'\], got 'JSON'"):
        check_log_format("JSON")


def test_json_uses_rays_own_logging_config_and_keeps_worker_lines_out_of_the_driver():
    assert ray_init_logging("text") == {}
    options = ray_init_logging("json")
    assert isinstance(options["logging_config"], ray.LoggingConfig)
    assert options["logging_config"].encoding == "JSON" and options["log_to_driver"] is False
    assert serve_logging_config("json")["encoding"] == "JSON"
    assert serve_logging_config("text") is None, "text leaves Serve's default or the config file's setting"


def test_text_logs_print_bare_messages_with_secrets_scrubbed(monkeypatch):
    monkeypatch.setenv("DEEPSYNTH_API_TOKEN", SECRET)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        logger = configure_logging("text", run_name="r1")
        logger.info("token %s and %s", SECRET, HF_SHAPED)
        logger.info("step 3/8  loss 1.0", extra={"step": 3})
    assert out.getvalue() == f"token {REDACTED} and {REDACTED}\nstep 3/8  loss 1.0\n"


def test_the_record_filter_adds_context_and_scrubs_message_and_extra_fields():
    handler = logging.handlers.BufferingHandler(capacity=10)
    install_filter(handler, record_filter(frozenset({SECRET}), {"run_name": "r1", "rank": 0}))
    install_filter(handler, record_filter(frozenset({SECRET}), {"run_name": "r2", "rank": 1}))  # replaces the first
    logger = logging.getLogger("deepsynth.test-logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("bad %s", SECRET, extra={"detail": f"Bearer {SECRET}", "rank": 5})
    finally:
        logger.removeHandler(handler)
    (record,) = handler.buffer
    assert record.getMessage() == f"bad {REDACTED}"
    assert record.detail == f"Bearer {REDACTED}"
    assert record.run_name == "r2" and record.rank == 5, "a record's own fields win over the context"
    assert len(handler.filters) == 1
