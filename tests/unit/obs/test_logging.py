"""Log formats, logging_config validation, and the level a failed request is logged at."""

from __future__ import annotations

import io
import json
import logging

import pytest

from modelplex._replica import execution as _execution
from modelplex._config import DeploymentConfig, LoggingConfig
from modelplex._errors import MissingModelIdError, RouteNotFoundError
from modelplex._obs.logging import JSONFormatter, TextFormatter, make_formatter
from modelplex._deploy.schema import parse_config


def record(msg: str = "GET / 200 1.5ms", **extra) -> logging.LogRecord:
    rec = logging.LogRecord("modelplex.access", logging.INFO, "/x/_proxy.py", 7, msg, (), None)
    rec.__dict__.update(extra)
    return rec


ACCESS = dict(access=True, application="default", deployment="default_M", replica="default_M#abcdef",
              request_id="0123456789", route="/", model_id="1", method="GET", status=200,
              latency_ms=1.5, client="127.0.0.1:5")


def test_text_access_line_has_every_field_in_order():
    fields = TextFormatter().format(record(**ACCESS)).split()
    assert fields[0] == "INFO" and fields[3:8] == [
        "default_M", "default_M#abcdef", "0123456789", "/", "_proxy.py:7"
    ]
    assert fields[8:] == ["-", "GET", "/", "200", "1.5ms", "model_id=1"]


def test_text_driver_lines_keep_their_shape_and_extra_attrs_go_before_the_message():
    line = TextFormatter(["name", "taskName"]).format(record("Started"))
    assert line.split()[3:] == ["modelplex", "_proxy.py:7", "modelplex.access", "None", "-", "Started"]


def test_json_line_has_rays_keys_and_the_traceback_in_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        rec = record("failed", **{**ACCESS, "access": False})
        rec.exc_info = sys.exc_info()
    line = JSONFormatter(["name", "funcName"]).format(rec)
    assert "\n" not in line
    out = json.loads(line)
    assert out["levelname"] == "INFO" and out["message"] == "failed" and out["asctime"]
    assert {k: out[k] for k in ("deployment", "replica", "request_id", "route", "model_id")} == {
        "deployment": "default_M", "replica": "default_M#abcdef", "request_id": "0123456789",
        "route": "/", "model_id": "1",
    }
    assert out["name"] == "modelplex.access" and "funcName" in out
    assert "ValueError: boom" in out["exc_text"]


def test_json_leaves_out_context_a_line_does_not_have():
    out = json.loads(JSONFormatter().format(record("ready", replica="r", request_id="-", route="-")))
    assert "request_id" not in out and "route" not in out and out["replica"] == "r"


def test_make_formatter_follows_the_encoding():
    assert isinstance(make_formatter(LoggingConfig(encoding="JSON")), JSONFormatter)
    assert isinstance(make_formatter(LoggingConfig()), TextFormatter)


def test_logging_config_takes_rays_keys_and_names_a_bad_value():
    config = LoggingConfig.from_value(
        {"encoding": "JSON", "log_level": 30, "enable_access_log": False,
         "additional_log_standard_attrs": ["name", "funcName", "name"]}
    )
    assert config == LoggingConfig("JSON", "WARNING", False, ("name", "funcName"))
    assert DeploymentConfig("M", logging_config={"log_level": "DEBUG"}).logging_config.log_level == "DEBUG"
    for bad, words in [
        ({"encoding": "XML"}, "encoding must be 'TEXT' or 'JSON', got 'XML'"),
        ({"log_level": "LOUD"}, "log_level must be one of"),
        ({"additional_log_standard_attrs": ["nope"]}, "unknown attribute 'nope'"),
        ({"enable_access_log": "yes"}, "enable_access_log must be a bool, got 'yes'"),
        ({"logs_dir": "/var/log"}, "logs_dir'] is not supported yet"),
        ({"colour": True}, "unknown key(s) 'colour'"),
    ]:
        with pytest.raises((TypeError, ValueError), match=None) as info:
            LoggingConfig.from_value(bad)
        assert words in str(info.value), (bad, str(info.value))


def test_config_files_take_json_and_extra_attrs_at_the_top_and_per_deployment():
    config = parse_config({
        "logging_config": {"encoding": "JSON", "additional_log_standard_attrs": ["name"]},
        "applications": [{"import_path": "m:app", "deployments": [
            {"name": "M", "logging_config": {"log_level": "WARNING", "enable_access_log": False}},
        ]}],
    })
    assert config.logging_config.config() == LoggingConfig("JSON", "INFO", True, ("name",))
    options = config.applications[0].deployments[0].options()
    assert DeploymentConfig(**options).logging_config == LoggingConfig("TEXT", "WARNING", False)


def test_a_client_error_is_one_warning_line_and_a_server_error_keeps_its_traceback(caplog):
    caplog.set_level(logging.INFO, logger="modelplex.replica")
    for exc in (MissingModelIdError(), RouteNotFoundError("nope"), ValueError("bug")):
        try:
            raise exc
        except Exception as raised:
            _execution._log_failure(raised)
    [missing, route, bug] = caplog.records
    assert missing.levelno == route.levelno == logging.WARNING
    assert missing.exc_info is None and route.exc_info is None
    assert "\n" not in missing.getMessage() and "(400)" in missing.getMessage()
    assert bug.levelno == logging.ERROR and bug.exc_info is not None


def access_line(**fields):
    from modelplex._obs.access_log import AccessLine, Site

    base = dict(created=1_764_000_000.25, site=Site("modelplex.access", "/x/access.py", 44),
                head="GET", what="/chat", outcome=200, ms=2.94, status=200, client="127.0.0.1:5",
                application="default", deployment="default_M", replica="default_M#abcdef",
                request_id="0123456789", route="/chat", model_id="1")
    return AccessLine(**{**base, **fields})


@pytest.mark.parametrize("formatter", [
    TextFormatter(), JSONFormatter(), TextFormatter(["name"]), JSONFormatter(["name", "thread"])
], ids=["text", "json", "text+attrs", "json+attrs"])
@pytest.mark.parametrize("fields", [
    {}, dict(outcome="-", status=None, model_id="-", application="-", deployment="-", replica="-"),
    dict(head="CALL", what="__call__", outcome="OK", status="OK", client=None, route="-"),
], ids=["request", "unanswered", "handle call"])
def test_a_queued_line_is_what_the_formatter_writes_for_its_record(formatter, fields):
    from modelplex._obs.access_log import AccessLog, record

    line = access_line(**fields)
    stream = io.StringIO()
    target = logging.StreamHandler(stream)
    target.setFormatter(formatter)
    log = AccessLog([target])
    log.write(line)  # no running loop: written at once
    expected = formatter.format(record(line))
    if isinstance(formatter, JSONFormatter) and "thread" in formatter._attrs:
        expected = json.loads(expected)
        got = json.loads(stream.getvalue())
        assert got.pop("thread") and expected.pop("thread")  # the writer's thread, not the request's
        assert got == expected
    else:
        assert stream.getvalue() == expected + "\n"
    if isinstance(formatter, TextFormatter) and not formatter._attrs and not fields:
        assert expected.endswith("access.py:44 - GET /chat 200 2.9ms model_id=1")


async def test_access_lines_leave_in_one_batch_for_each_destination_in_order(tmp_path):
    import asyncio

    from modelplex._obs.access_log import ACCESS_FLUSH_S, AccessLog, FlushFirst

    class Counted(io.StringIO):
        def write(self, text):
            writes.append(text)
            return super().write(text)

    writes: list[str] = []
    console = logging.StreamHandler(Counted())
    console.setFormatter(TextFormatter())
    file = logging.FileHandler(tmp_path / "proxy.log")
    file.setFormatter(TextFormatter())
    file.close()  # as a logging.config elsewhere may do: the writer reopens it
    log = AccessLog([console, file])
    console.addFilter(FlushFirst(log))
    other = logging.getLogger("test.access.other")
    other.addHandler(console)
    other.propagate = False
    try:
        for i in range(3):
            log.write(access_line(what=f"/{i}"))
        assert writes == []  # nothing yet: one write per batch, not one per line
        await asyncio.sleep(ACCESS_FLUSH_S * 2)
        assert len(writes) == 1 and writes[0].count("\n") == 3
        assert (tmp_path / "proxy.log").read_text().count(" - GET /") == 3
        log.write(access_line(what="/3"))
        other.warning("after the fourth request")  # the queued line goes out first
        assert [w.split(" - ")[1].strip() for w in writes[1:]] == [
            "GET /3 200 2.9ms model_id=1", "after the fourth request"]
    finally:
        other.removeHandler(console)
        log.close()
        file.close()


def test_propagated_lines_reach_an_applications_handler_as_records():
    from modelplex._obs.access_log import AccessLog

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    parent = logging.getLogger("test.access.app")
    parent.addHandler(Keep(logging.INFO))
    try:
        AccessLog([], propagate_to=parent).write(access_line())
    finally:
        parent.handlers.clear()
    (rec,) = seen
    assert rec.name == "modelplex.access" and rec.getMessage() == "GET /chat 200 2.9ms"
    assert (rec.replica, rec.model_id, rec.status, rec.client) == (
        "default_M#abcdef", "1", 200, "127.0.0.1:5")
