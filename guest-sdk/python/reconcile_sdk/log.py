"""Structured logging: info("msg", replicas=3). Field types are kept (int, float, bool, str)."""
from wit_world.imports import log as _log
from wit_world.imports import types as _t


def value(v) -> _t.Value:
    if isinstance(v, bool):
        return _t.Value_Boolean(v)
    if isinstance(v, int):
        return _t.Value_Int(v)
    if isinstance(v, float):
        return _t.Value_Float(v)
    return _t.Value_String(str(v))


def log(level: str, message: str, /, **fields):
    _log.log(_log.Level[level.upper()], message, [(k, value(v)) for k, v in fields.items()])


def enabled(level: str, /) -> bool:
    return _log.enabled(_log.Level[level.upper()])


def trace(message, /, **f): log("trace", message, **f)
def debug(message, /, **f): log("debug", message, **f)
def info(message, /, **f): log("info", message, **f)
def warn(message, /, **f): log("warn", message, **f)
def error(message, /, **f): log("error", message, **f)
