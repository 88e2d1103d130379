"""Spans, events and attributes on the host's trace."""
import contextlib

from wit_world.imports import trace as _trace
from .log import value


def set_attribute(key: str, v):
    _trace.set_attribute(key, value(v))


def event(name: str, /, **attributes):
    _trace.add_event(name, [_trace.Attribute(k, value(v)) for k, v in attributes.items()])


@contextlib.contextmanager
def span(name: str):
    """with span("render"): ...  An exception marks the span failed and propagates."""
    handle = _trace.start_span(name)
    try:
        yield
    except BaseException as e:
        _trace.end_span(handle, str(e) or type(e).__name__)
        raise
    _trace.end_span(handle, None)
