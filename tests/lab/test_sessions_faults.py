"""Writes whose COMMIT reply is lost: the router retries them, the session applies them once.

A TCP proxy in front of the shared cluster's primary swallows the reply to COMMIT (to CALL for
add_items, whose procedure commits) and closes the connection: the write committed but the
client cannot know. The router retries on a new
connection; the operation id carried by each statement makes the retry a no-op that returns
the original outcome.
"""

from __future__ import annotations

from typing import Any

from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.proxy import ThreadedProxy as Proxy
from pgsessions.devcluster.proxy import command_complete

LOST_COMMIT = command_complete("COMMIT")
# add_items is a procedure that commits inside the CALL: its reply is the one to lose
LOST_CALL = command_complete("CALL")


def msg(i: int) -> dict[str, Any]:
    return {"role": "user", "content": f"message {i}"}


async def test_lost_commit_replies_apply_each_write_once(
    cluster: LocalCluster, schema: str
) -> None:
    with Proxy("127.0.0.1", cluster.primary.port) as proxy:
        hosts = [proxy.dsn(), *(n.dsn for n in cluster.replicas)]
        config = RouterConfig(hosts=hosts, schema=schema, check_interval=0.1)
        async with SessionRouter(config) as router:
            await migrate(router)
            s = PostgresSession("ambiguous", router)
            await s.add_items([msg(0)])

            proxy.drop_after_reply(LOST_CALL)
            await s.add_items([msg(1), msg(2)])
            assert proxy.drops == 1 and not proxy.armed
            assert router.stats()["retries"]["write"].get("connection", 0) >= 1
            assert await s.get_items() == [msg(0), msg(1), msg(2)]

            proxy.drop_after_reply(LOST_COMMIT)
            assert await s.pop_item() == msg(2)  # the item the lost attempt removed
            assert proxy.drops == 2
            assert await s.get_items() == [msg(0), msg(1)]

            proxy.drop_after_reply(LOST_COMMIT)
            assert await s.update_metadata({"k": 1}) == {"k": 1}
            assert proxy.drops == 3

            proxy.drop_after_reply(LOST_COMMIT)
            await s.clear_session()
            assert proxy.drops == 4
            assert await s.get_items() == []
            assert await s.get_metadata() is None
