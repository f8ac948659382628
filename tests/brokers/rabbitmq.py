"""The RabbitMQ harness: the broker on 127.0.0.1:5672 (guest/guest, vhost /), driven with
pika directly. ``unsettled`` asks ``rabbitmqctl``, the only place that counts messages
delivered and not yet acked (AMQP's passive declare counts the ready ones only)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from semsearch.core.events import Subscription

HOST, PORT = "127.0.0.1", 5672


class RabbitMqHarness:
    name = "rabbitmq"
    url = f"amqp://guest:guest@{HOST}:{PORT}/%2f"

    def url_at(self, port: int) -> str:
        return f"amqp://guest:guest@{HOST}:{port}/%2f"

    def down(self) -> str | None:
        try:
            import pika  # noqa: F401
        except ImportError:
            return 'pika is not installed (pip install -e ".[rabbitmq]")'
        try:
            with self._channel():
                return None
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    def fresh(self, create: bool = True) -> Subscription:
        queue = f"semsearch-test-{uuid.uuid4().hex[:12]}"
        sub = Subscription(url=self.url, queue=queue, dead_letter=f"{queue}.dlq",
                           redeliver_after=3.0, connect_timeout=5.0)
        if create:
            with self._channel() as ch:
                ch.queue_declare(queue, durable=True)
                ch.queue_declare(f"{queue}.dlq", durable=True)
        return sub

    def cli_args(self, sub: Subscription) -> list[str]:
        return ["--from", sub.url, "--queue", str(sub.queue),
                "--dead-letter", str(sub.dead_letter), "--redeliver-after",
                f"{sub.redeliver_after:g}"]

    def publish(self, sub: Subscription, bodies: Sequence[bytes]) -> None:
        import pika

        with self._channel() as ch:
            ch.confirm_delivery()
            for body in bodies:
                ch.basic_publish("", str(sub.queue), body, mandatory=True,
                                 properties=pika.BasicProperties(delivery_mode=2))

    def dead_letters(self, sub: Subscription) -> list[tuple[bytes, str]]:
        """Read without taking: nothing is acked, so closing the connection puts them back."""
        out: list[tuple[bytes, str]] = []
        with self._channel() as ch:
            while True:
                method, props, body = ch.basic_get(str(sub.dead_letter), auto_ack=False)
                if method is None:
                    return out
                reason = (props.headers or {}).get("x-semsearch-reason", "")
                out.append((body, reason.decode() if isinstance(reason, bytes) else reason))

    def unsettled(self, sub: Subscription) -> int:
        ctl = shutil.which("rabbitmqctl")
        if ctl is None:
            raise RuntimeError("rabbitmqctl is not on PATH")
        listed = subprocess.run([ctl, "-q", "list_queues", "-p", "/", "name", "messages",
                                 "--no-table-headers"], capture_output=True, text=True,
                                timeout=60, check=True).stdout
        for line in listed.splitlines():
            name, _, count = line.strip().rpartition("\t")
            if name == sub.queue:
                return int(count)
        raise LookupError(f"queue {sub.queue!r} is not on the broker")

    def cleanup(self, sub: Subscription) -> None:
        for queue in (sub.queue, sub.dead_letter, f"{sub.queue}.dead"):
            with suppress(Exception), self._channel() as ch:
                ch.queue_delete(str(queue))

    @contextmanager
    def _channel(self) -> Iterator[Any]:
        import pika

        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = params.stack_timeout = 5
        conn = pika.BlockingConnection(params)
        try:
            yield conn.channel()
        finally:
            with suppress(Exception):
                conn.close()


HARNESS = RabbitMqHarness()
