"""Topics: subscribe (with resume), unsubscribe, publish, presence (PROTOCOL.md 2.4, 3).

Every request on a topic passes its permissions.toml roles, then its pattern's authorizer
(`Topic` in a handler module's TOPICS), through `ctx.services.topics.authorize`."""

from __future__ import annotations

from typing import Any

from realtime import Context, JSONObject, Package
from schema import topics as s


async def subscribe(ctx: Context, data: JSONObject) -> dict[str, Any]:
    session = ctx.socket()  # topics are served on a socket only: INVALID_DATA over REST
    topic = data["topic"]
    await ctx.services.topics.authorize(ctx, topic, "subscribe")
    if not data.get("presence"):
        return await ctx.subscribe(topic, data.get("since"))
    await ctx.services.topics.authorize(ctx, topic, "presence")  # who may see who is here
    answer = await ctx.subscribe(topic, data.get("since"))
    # the snapshot in the answer; presence.join/leave events once the answer is out
    members, capped = await ctx.services.hub.watch_presence(session, topic)
    return {**answer, "presence": members, "presence_capped": capped}


async def unsubscribe(ctx: Context, data: JSONObject) -> dict[str, Any]:
    ctx.unsubscribe(data["topic"])
    return {"topic": data["topic"]}


async def publish(ctx: Context, data: JSONObject) -> dict[str, Any]:
    await ctx.services.topics.authorize(ctx, data["topic"], "publish")
    key = data.get("idempotency_key")
    offset = await ctx.services.hub.publish(data["topic"], data["data"], key=key)
    return {"topic": data["topic"], "offset": str(offset)}


async def presence(ctx: Context, data: JSONObject) -> dict[str, Any]:
    await ctx.services.topics.authorize(ctx, data["topic"], "presence")
    return {"topic": data["topic"], "presence": await ctx.services.hub.presence(data["topic"])}


async def history(ctx: Context, data: JSONObject) -> dict[str, Any]:
    # whoever may subscribe may read what a subscriber would have received
    await ctx.services.topics.authorize(ctx, data["topic"], "subscribe")
    hub = ctx.services.hub
    return await hub.history(data["topic"], data.get("since"), data["limit"], data["reverse"])


async def channels(ctx: Context, data: JSONObject) -> dict[str, Any]:
    # the server's own subscriptions of this socket: its personal channel, the connect
    # hooks' topics, each with the offset to resume it from (?since.<topic>=<offset>)
    return {"channels": ctx.services.hub.pinned(ctx.socket())}


PACKAGES = [
    Package(
        30,
        "topics.subscribe",
        subscribe,
        schema=s.SUBSCRIBE,
        response_schema=s.SUBSCRIBED,
        description="Subscribe; with `since`, replay what followed that offset first.",
    ),
    Package(
        31,
        "topics.unsubscribe",
        unsubscribe,
        schema=s.TOPIC_ONLY,
        response_schema=s.TOPIC_ONLY,
        description="Stop receiving a topic.",
    ),
    Package(
        32,
        "topics.publish",
        publish,
        schema=s.PUBLISH,
        response_schema=s.PUBLISHED,
        description="Publish on a topic (per-topic roles).",
    ),
    Package(
        33,
        "topics.presence",
        presence,
        schema=s.TOPIC_ONLY,
        response_schema=s.PRESENCE,
        description="Who is subscribed to the topic, on every node.",
    ),
    Package(
        34,
        "topics.history",
        history,
        schema=s.HISTORY,
        response_schema=s.HISTORY_PAGE,
        description="A page of the topic's retained publications, with their offsets.",
    ),
    Package(
        35,
        "topics.channels",
        channels,
        schema=s.EMPTY,
        response_schema=s.CHANNELS,
        description="The socket's server-side subscriptions (its personal channel first).",
    ),
]
