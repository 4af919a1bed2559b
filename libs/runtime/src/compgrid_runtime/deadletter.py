"""The dead-letter stream: messages a consumer gave up on, with the reason, kept for operators.

A dead letter keeps the original body and headers and adds ``compgrid-dlq-*`` headers (reason,
error, original subject, stream sequence, deliveries). Its ``Nats-Msg-Id`` is derived from the
original stream and sequence, so a consumer that dies after dead-lettering does not add a twin.
"""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from compgrid_events.streams import DEADLETTER

REASON_HEADER = "compgrid-dlq-reason"
ERROR_HEADER = "compgrid-dlq-error"
SUBJECT_HEADER = "compgrid-dlq-subject"
SEQUENCE_HEADER = "compgrid-dlq-stream-seq"
DELIVERIES_HEADER = "compgrid-dlq-deliveries"
CONSUMER_HEADER = "compgrid-dlq-consumer"


def deadletter_subject(service: str, consumer: str) -> str:
    """Return the dead-letter subject of one consumer."""
    return f"{DEADLETTER.subjects[0].removesuffix('>')}{service}.{consumer}"


async def dead_letter(
    js: JetStreamContext, msg: Msg, *, service: str, consumer: str, reason: str, error: str
) -> None:
    """Copy ``msg`` to the dead-letter stream with why it was given up; raises if not stored."""
    meta = msg.metadata
    stream_seq = meta.sequence.stream if meta.sequence else 0
    headers = {
        **(msg.headers or {}),
        REASON_HEADER: reason,
        ERROR_HEADER: error[:2000].replace("\r", " ").replace("\n", " "),
        SUBJECT_HEADER: msg.subject,
        SEQUENCE_HEADER: str(stream_seq),
        DELIVERIES_HEADER: str(meta.num_delivered),
        CONSUMER_HEADER: consumer,
        "Nats-Msg-Id": f"dlq.{meta.stream}.{stream_seq}.{consumer}",
    }
    await js.publish(deadletter_subject(service, consumer), msg.data, headers=headers, timeout=5)
