"""The Redis Streams harness: the server on 127.0.0.1:6379, database 13 (the embedding cache
tests flush 14 and 15), one stream key, consumer group and dead-letter stream per
subscription, all named with a random suffix so parallel runs do not meet."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import redis

from semsearch.core.events import Subscription

HOST, PORT, DB = "127.0.0.1", 6379, 13


class RedisHarness:
    name = "redis"
    url = f"redis://{HOST}:{PORT}/{DB}"

    def url_at(self, port: int) -> str:
        return f"redis://{HOST}:{port}/{DB}"

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)

    def down(self) -> str | None:
        try:
            with self._client() as client:
                client.ping()
                version = str(client.info("server").get("redis_version", "0"))
        except (redis.RedisError, OSError) as exc:
            return f"{HOST}:{PORT}: {exc}"
        if int(version.split(".")[0]) < 7:
            return f"Redis {version} has no consumer group lag (7 or later is needed)"
        return None

    def fresh(self, create: bool = True) -> Subscription:
        tag = secrets.token_hex(6)
        stream = f"semsearch-test:{tag}"
        sub = Subscription(url=self.url, stream=stream, group=f"g-{tag}",
                           dead_letter=f"{stream}:dead-letters", create=False,
                           connect_timeout=5.0, redeliver_after=3.0)
        if create:
            with self._client() as client:
                client.xgroup_create(stream, sub.group, id="0", mkstream=True)
        return sub

    def cli_args(self, sub: Subscription) -> list[str]:
        assert sub.stream is not None and sub.dead_letter is not None
        return ["--from", sub.url, "--stream", sub.stream, "--group", sub.group,
                "--dead-letter", sub.dead_letter, "--redeliver-after",
                f"{sub.redeliver_after:g}"]

    def publish(self, sub: Subscription, bodies: Sequence[bytes]) -> None:
        assert sub.stream is not None
        with self._client() as client:
            pipe = client.pipeline(transaction=True)  # in order, all or nothing
            for body in bodies:
                pipe.xadd(sub.stream, {"event": body})
            pipe.execute()

    def dead_letters(self, sub: Subscription) -> list[tuple[bytes, str]]:
        assert sub.dead_letter is not None
        with self._client() as client:
            entries = client.xrange(sub.dead_letter)
        return [(fields[b"event"], fields[b"reason"].decode()) for _, fields in entries]

    def unsettled(self, sub: Subscription) -> int:
        """Pending (delivered, unacked) plus not yet delivered, counted from the entries
        themselves rather than trusting the group's ``lag``."""
        assert sub.stream is not None
        with self._client() as client:
            group = next(g for g in client.xinfo_groups(sub.stream)
                         if g["name"].decode() == sub.group)
            undelivered = client.xrange(sub.stream, min=b"(" + group["last-delivered-id"])
            return int(group["pending"]) + len(undelivered)

    def cleanup(self, sub: Subscription) -> None:
        assert sub.stream is not None and sub.dead_letter is not None
        with self._client() as client:
            # the named dead-letter stream, and the default one of an adapter built without it
            client.delete(sub.stream, sub.dead_letter, f"{sub.stream}:dead")


HARNESS = RedisHarness()
