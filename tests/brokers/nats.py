"""The NATS JetStream harness: the server on 127.0.0.1:4222 (started with -js), one stream,
durable consumer and dead-letter stream per subscription, all named with a random suffix so
parallel runs do not meet. The stream takes ``semsearch_test.<tag>.>`` and the subscription
filters ``semsearch_test.<tag>.docs``, so the filter subject is exercised too.

nats-py is asyncio-only: each call opens its own connection in ``asyncio.run``, which keeps
the harness independent of the adapter's event loop thread."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from semsearch.core.events import Subscription

HOST, PORT = "127.0.0.1", 4222
REASON = "Semsearch-Reason"
_T = TypeVar("_T")


def _run(work: Callable[[JetStreamContext], Awaitable[_T]], url: str | None = None) -> _T:
    async def main() -> _T:
        nc: Client = await nats.connect(url or NatsHarness.url, connect_timeout=2,
                                        allow_reconnect=False, max_reconnect_attempts=0)
        try:
            return await work(nc.jetstream(timeout=5))
        finally:
            await nc.close()

    return asyncio.run(main())


def _header(encoded: str | None, name: str) -> str:
    """One header of a message read with ``get_msg``, decoded as UTF-8 here: nats-py parses
    them with the email parser, which garbles anything but ASCII."""
    lines = base64.b64decode(encoded).split(b"\r\n")[1:] if encoded else []
    for line in lines:
        key, _, value = line.partition(b":")
        if key.strip().decode("ascii", "replace").lower() == name.lower():
            return value.strip().decode("utf-8")
    return ""


class NatsHarness:
    name = "nats"
    url = f"nats://{HOST}:{PORT}"

    def url_at(self, port: int) -> str:
        return f"nats://{HOST}:{port}"

    def down(self) -> str | None:
        async def check(js: JetStreamContext) -> None:
            await js.account_info()

        try:
            _run(check)
        except Exception as exc:
            return f"{HOST}:{PORT}: {type(exc).__name__} {exc} (JetStream enabled? -js)"
        return None

    def fresh(self, create: bool = True) -> Subscription:
        tag = secrets.token_hex(6)
        stream = f"SEMSEARCH_TEST_{tag}"
        sub = Subscription(url=self.url, stream=stream, subject=f"semsearch_test.{tag}.docs",
                           group=f"g-{tag}", dead_letter=f"{stream}_DLQ", create=False,
                           connect_timeout=5.0, redeliver_after=3.0)
        if create:
            async def add(js: JetStreamContext) -> None:
                await js.add_stream(StreamConfig(name=stream,
                                                 subjects=[f"semsearch_test.{tag}.>"],
                                                 storage=StorageType.FILE))

            _run(add)
        return sub

    def cli_args(self, sub: Subscription) -> list[str]:
        assert sub.stream and sub.subject and sub.dead_letter
        return ["--from", sub.url, "--stream", sub.stream, "--subject", sub.subject,
                "--group", sub.group, "--dead-letter", sub.dead_letter,
                "--redeliver-after", f"{sub.redeliver_after:g}"]

    def publish(self, sub: Subscription, bodies: Sequence[bytes]) -> None:
        assert sub.subject and sub.stream
        subject, stream = sub.subject, sub.stream

        async def send(js: JetStreamContext) -> None:
            for body in bodies:  # one at a time, each PubAck awaited: in order, durable
                await js.publish(subject, body, stream=stream)

        _run(send)

    def dead_letters(self, sub: Subscription) -> list[tuple[bytes, str]]:
        assert sub.dead_letter
        dead = sub.dead_letter

        async def read(js: JetStreamContext) -> list[tuple[bytes, str]]:
            try:
                state = (await js.stream_info(dead)).state
            except NotFoundError:
                return []
            got = []
            for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
                msg = await js.get_msg(dead, seq)
                got.append((msg.data or b"", _header(msg.hdrs, REASON)))
            return got

        return _run(read)

    def unsettled(self, sub: Subscription) -> int:
        """Not yet delivered plus delivered and unacked, from the durable consumer; all the
        stream's messages when no consumer has been created yet."""
        assert sub.stream
        stream = sub.stream

        async def count(js: JetStreamContext) -> int:
            try:
                info = await js.consumer_info(stream, sub.group)
            except NotFoundError:
                try:
                    return int((await js.stream_info(stream)).state.messages)
                except NotFoundError:
                    return 0
            return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

        return _run(count)

    def cleanup(self, sub: Subscription) -> None:
        names = [n for n in (sub.stream, sub.dead_letter) if n]

        async def delete(js: JetStreamContext) -> None:
            for name in names:
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(name)

        _run(delete)


HARNESS = NatsHarness()
