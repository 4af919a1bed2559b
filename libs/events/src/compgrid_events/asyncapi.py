"""Generate the AsyncAPI 3.0 document of every CompGrid event from the contracts.

``python -m compgrid_events.asyncapi [PATH]`` writes it (to stdout without a path); the
committed copy in ``docs/asyncapi.json`` is compared with this output by a drift test.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import compgrid_events  # noqa: F401  (registers every contract)
from compgrid_events.base import Event
from compgrid_events.registry import registry
from compgrid_events.streams import ALL_STREAMS

HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "Nats-Msg-Id": {"type": "string", "description": "the event_id; JetStream de-duplicates"},
        "compgrid-event-type": {"type": "string", "description": "contract name and version"},
        "traceparent": {"type": "string", "description": "W3C trace context"},
    },
    "required": ["Nats-Msg-Id", "compgrid-event-type"],
}


def _channel_id(cls: type[Event]) -> str:
    return cls.subject_pattern().replace(".", "_").replace("*", "x")


def _channel(cls: type[Event]) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "address": cls.subject_template,
        "description": f"stream {cls.stream.name}",
        "messages": {cls.__name__: {"$ref": f"#/components/messages/{cls.__name__}"}},
    }
    tokens = cls.routing_tokens()
    if tokens:
        channel["parameters"] = {name: {"description": f"routing token: {name}"} for name in tokens}
    return channel


def _message(cls: type[Event]) -> dict[str, Any]:
    return {
        "name": cls.event_type(),
        "title": cls.__name__,
        "summary": (cls.__doc__ or "").strip().splitlines()[0],
        "contentType": "application/json",
        "headers": HEADERS_SCHEMA,
        "payload": cls.model_json_schema(ref_template="#/components/schemas/{model}"),
    }


def _hoist_defs(messages: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for message in messages.values():
        schemas.update(message["payload"].pop("$defs", {}))
    return dict(sorted(schemas.items()))


def build_document() -> dict[str, Any]:
    """Return the AsyncAPI document as a plain dict (deterministic ordering)."""
    classes = [c for c in registry.classes() if c.__module__.startswith("compgrid_events.")]
    messages = {cls.__name__: _message(cls) for cls in classes}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "CompGrid events",
            "version": "1.0.0",
            "description": "Every event on CompGrid's NATS JetStream backbone. Streams: "
            + "; ".join(
                f"{s.name} ({', '.join(s.subjects)}) owned by {s.owner}" for s in ALL_STREAMS
            ),
        },
        "defaultContentType": "application/json",
        "channels": {_channel_id(cls): _channel(cls) for cls in classes},
        "operations": {
            f"publish{cls.__name__}": {
                "action": "send",
                "channel": {"$ref": f"#/channels/{_channel_id(cls)}"},
                "summary": f"published by {cls.stream.owner}",
            }
            for cls in classes
        },
        "components": {"messages": messages, "schemas": _hoist_defs(messages)},
    }


def render() -> str:
    """Return the document as stable, pretty-printed JSON text."""
    return json.dumps(build_document(), indent=2, sort_keys=False) + "\n"


def main() -> None:
    """Write the document to the path given, or to stdout."""
    text = render()
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
