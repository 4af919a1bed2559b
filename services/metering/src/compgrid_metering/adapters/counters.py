"""Usage counters in Redis, each tick applied exactly once.

One Lua script claims the tick's id (``SET NX`` with an expiry) and, only when the claim is new,
applies every increment of the tick; Redis runs a script atomically, so a tick is either wholly
counted once or not at all, whichever metering process delivers it and however often.

Keys (``P`` is the configured prefix; hours are UTC epoch seconds):

* ``P:dedup:<tick id>`` — the claim of an applied tick;
* ``P:i:<hour>:<instance>``, ``P:p:<hour>:<project>``, ``P:b:<hour>:<budget code>`` — hashes of
  ``running_us``, ``vcpu_us``, ``memory_mib_us``, ``cpu_ns`` and ``gpu_us:<model>``; the
  instance's hash also names its ``project`` and ``budget``;
* ``P:h:<hour>`` — the instances with usage in that hour;
  ``P:ih:<instance>``, ``P:ph:<project>``, ``P:bh:<budget code>`` — the hours each has usage in;
* ``P:touched`` — hours by when they last received usage (closing rollups reads it);
* ``P:owner`` — the project of each instance (``i:<id>``) and budget code (``b:<id>``);
* ``P:idle:<instance>`` — its current idle stretch (since, until, CPU used and available);
  ``P:idlers`` — the instances in one;
* ``P:intact`` — present while the counters are known complete; gone with a loss of Redis's
  data, until a rebuild (rollups wait for it, so they never publish a loss as a correction);
* ``P:rebuilding`` — the token of the one process rebuilding them (``rebuild_lock.py``).

The script names its keys in its arguments, so it needs a single Redis (not a cluster).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from redis.asyncio import Redis

from compgrid_metering.domain.hours import Piece

_APPLY = """
local dup = {}
for k = 1, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 1 then
    dup[#dup + 1] = k
  end
end
if #dup > 0 then
  return dup
end
for k = 1, #KEYS do
  redis.call('SET', KEYS[k], '1', 'EX', ARGV[1])
end
local i = 2
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'I' then
    redis.call('HINCRBY', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'H' then
    redis.call('HSET', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'S' then
    redis.call('SADD', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'N' then
    redis.call('HSETNX', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'M' then
    local now = tonumber(redis.call('HGET', ARGV[i + 1], ARGV[i + 2]))
    if now == nil or now < tonumber(ARGV[i + 3]) then
      redis.call('HSET', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    end
    i = i + 4
  elseif op == 'X' then
    redis.call('DEL', ARGV[i + 1])
    redis.call('SREM', ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  else
    redis.call('ZADD', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  end
end
return dup
"""

_FORGET = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

FIELDS = ("running_us", "vcpu_us", "memory_mib_us", "cpu_ns")


@dataclass(frozen=True)
class Activity:
    """How busy one instance was over one sample (for idle detection)."""

    instance_id: UUID
    project_id: UUID
    idle: bool
    started_ms: int
    ended_ms: int
    cpu_ns: int
    capacity_ns: int


@dataclass(frozen=True)
class Tick:
    """What one usage tick adds: its id, its pieces per hour, and how busy each instance was."""

    tick_id: str
    pieces: list[Piece]
    activity: list[Activity] = field(default_factory=list)


@dataclass(frozen=True)
class Idle:
    """An instance idle since ``since`` up to ``until``, with its CPU use meanwhile."""

    instance_id: UUID
    project_id: UUID
    since: datetime
    until: datetime
    cpu_ns: int
    capacity_ns: int
    reported: bool


@dataclass
class Usage:
    """Summed usage: whole microseconds (per vCPU, per MiB, per GPU) and CPU nanoseconds."""

    running_us: int = 0
    vcpu_us: int = 0
    memory_mib_us: int = 0
    cpu_ns: int = 0
    gpu_us: dict[str, int] = field(default_factory=dict)

    def add(self, other: Usage) -> None:
        """Add another usage to this one."""
        self.running_us += other.running_us
        self.vcpu_us += other.vcpu_us
        self.memory_mib_us += other.memory_mib_us
        self.cpu_ns += other.cpu_ns
        for model, us in other.gpu_us.items():
            self.gpu_us[model] = self.gpu_us.get(model, 0) + us

    @classmethod
    def from_hash(cls, values: Mapping[bytes | str, bytes | str]) -> Usage:
        """Read one counter hash."""
        usage = cls()
        for raw_key, raw_value in values.items():
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            if key in FIELDS:
                setattr(usage, key, int(raw_value))
            elif key.startswith("gpu_us:"):
                usage.gpu_us[key.removeprefix("gpu_us:")] = int(raw_value)
        return usage


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def epoch(hour: datetime) -> int:
    """An hour as its UTC epoch second."""
    return int(hour.timestamp())


def hour_at(seconds: int | bytes | str) -> datetime:
    """The UTC hour starting at an epoch second."""
    return datetime.fromtimestamp(int(seconds), UTC)


class Counters:
    """The usage counters of one metering deployment."""

    def __init__(self, redis: Redis, prefix: str, dedup_ttl_s: int) -> None:
        self.redis = redis
        self._p = prefix
        self._ttl = dedup_ttl_s
        self._apply = redis.register_script(_APPLY)
        self._forget = redis.register_script(_FORGET)

    def key(self, kind: str, *parts: object) -> str:
        """A key of this deployment."""
        return ":".join((self._p + kind, *(str(p) for p in parts)))

    def _ops(self, ticks: Iterable[Tick], now_ms: int) -> list[str | int]:
        """The increments of several ticks, summed per counter, and what they mark."""
        sums: dict[tuple[str, str], int] = defaultdict(int)
        marks: dict[tuple[str | int, ...], None] = {}
        touched: dict[int, None] = {}
        activity: dict[UUID, list[Activity]] = defaultdict(list)
        # The hot path: keys are spelled out here exactly as ``key()`` builds them.
        p = self._p
        owner = p + "owner"
        for tick in ticks:
            for piece in tick.pieces:
                hour = epoch(piece.hour)
                touched[hour] = None
                instance = str(piece.instance_id)
                project = str(piece.project_id)
                budget = str(piece.budget_code_id)
                own = f"{p}i:{hour}:{instance}"
                for counter in (own, f"{p}p:{hour}:{project}", f"{p}b:{hour}:{budget}"):
                    sums[counter, "running_us"] += piece.running_us
                    sums[counter, "vcpu_us"] += piece.vcpu_us
                    sums[counter, "memory_mib_us"] += piece.memory_mib_us
                    sums[counter, "cpu_ns"] += piece.cpu_ns
                    for model, us in piece.gpu_us.items():
                        sums[counter, f"gpu_us:{model}"] += us
                marks["H", own, "project", project] = None
                marks["H", own, "budget", budget] = None
                marks["H", owner, f"i:{instance}", project] = None
                marks["H", owner, f"b:{budget}", project] = None
                marks["S", f"{p}h:{hour}", instance] = None
                marks["S", f"{p}ih:{instance}", hour] = None
                marks["S", f"{p}ph:{project}", hour] = None
                marks["S", f"{p}bh:{budget}", hour] = None
            for mark in tick.activity:
                activity[mark.instance_id].append(mark)
        ops: list[str | int] = []
        for (counter, name), amount in sums.items():
            if amount:
                ops += ["I", counter, name, amount]
        for mark_ops in marks:
            ops += mark_ops
        for hour in touched:
            ops += ["Z", self.key("touched"), now_ms, hour]
        for instance_marks in activity.values():
            ops += self._idle_ops(instance_marks)
        return ops

    def _idle_ops(self, marks: list[Activity]) -> list[str | int]:
        """One instance's activity in a batch: a busy sample ends its idle stretch; the idle
        samples after the last busy one extend (or begin) one."""
        busy = [n for n, mark in enumerate(marks) if not mark.idle]
        first = marks[0]
        own = self.key("idle", first.instance_id)
        idlers = self.key("idlers")
        ops: list[str | int] = []
        if busy:
            ops += ["X", own, idlers, str(first.instance_id)]
        idle = marks[busy[-1] + 1 :] if busy else marks
        if idle:
            ops += ["N", own, "since_ms", min(m.started_ms for m in idle)]
            ops += ["M", own, "to_ms", max(m.ended_ms for m in idle)]
            ops += ["I", own, "cpu_ns", sum(m.cpu_ns for m in idle)]
            ops += ["I", own, "capacity_ns", sum(m.capacity_ns for m in idle)]
            ops += ["H", own, "project", str(first.project_id)]
            ops += ["S", idlers, str(first.instance_id)]
        return ops

    async def apply(self, ticks: list[Tick], now_ms: int) -> list[bool]:
        """Apply ticks in one script call: True for each counted now, False for each counted
        before. The script first looks for ticks already claimed; when there are some, it
        changes nothing and says which, and the others are applied by a second call."""
        applied = [True] * len(ticks)
        first: dict[str, int] = {}
        for n, tick in enumerate(ticks):  # the same tick twice in one batch: once
            if first.setdefault(tick.tick_id, n) != n:
                applied[n] = False
        pending = [n for n in range(len(ticks)) if applied[n]]
        while pending:
            batch = [ticks[n] for n in pending]
            dups = await self._apply(
                keys=[self.key("dedup", tick.tick_id) for tick in batch],
                args=[self._ttl, *self._ops(batch, now_ms)],
            )
            if not dups:
                break
            for index in dups:
                applied[pending[int(index) - 1]] = False
            pending = [n for n in pending if applied[n]]
        return applied

    async def usage(self, kind: str, owner: UUID, hour: datetime) -> Usage:
        """One instance's (``i``), project's (``p``) or budget code's (``b``) usage in an hour."""
        return Usage.from_hash(await self.redis.hgetall(self.key(kind, epoch(hour), owner)))

    async def hours(self, kind: str, owner: UUID) -> list[datetime]:
        """The hours an instance (``ih``), project (``ph``) or budget code (``bh``) has usage in."""
        found = await self.redis.smembers(self.key(kind, owner))
        return sorted(hour_at(h) for h in found)

    async def project_of(self, kind: str, owner: UUID) -> UUID | None:
        """The project of an instance (``i``) or budget code (``b``) with usage here."""
        found = await self.redis.hget(self.key("owner"), f"{kind}:{owner}")
        return UUID(_text(found)) if found is not None else None

    async def by_hour(
        self,
        kind: str,
        owner: UUID,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[datetime, Usage]:
        """Each hour's usage of an instance (``i``), project (``p``) or budget code (``b``),
        for the hours starting in ``[since, until)`` when given."""
        hours = [
            hour
            for hour in await self.hours(f"{kind}h", owner)
            if (since is None or hour >= since) and (until is None or hour < until)
        ]
        pipe = self.redis.pipeline(transaction=False)
        for hour in hours:
            pipe.hgetall(self.key(kind, epoch(hour), owner))
        values = await pipe.execute()
        return {hour: Usage.from_hash(v) for hour, v in zip(hours, values, strict=True)}

    async def total(self, kind: str, owner: UUID) -> Usage:
        """All usage of an instance, project or budget code that Redis holds."""
        summed = Usage()
        for usage in (await self.by_hour(kind, owner)).values():
            summed.add(usage)
        return summed

    async def touched_before(self, latest: datetime) -> list[tuple[datetime, str]]:
        """Hours up to ``latest`` that received usage since they were last rolled up, each with
        the mark of its last touch (to forget it only if nothing came since)."""
        found: list[Any] = await self.redis.zrange(self.key("touched"), 0, -1, withscores=True)
        hours = []
        for member, score in found:
            hour = hour_at(member)
            if hour <= latest:
                hours.append((hour, repr(int(score)) if score == int(score) else repr(score)))
        return sorted(hours)

    async def forget_touch(self, hour: datetime, mark: str) -> bool:
        """Mark an hour rolled up, unless usage came in after ``mark``."""
        return bool(await self._forget(keys=[self.key("touched")], args=[epoch(hour), mark]))

    async def hour_instances(self, hour: datetime) -> dict[UUID, tuple[Usage, UUID, UUID]]:
        """Every instance's usage in an hour, with its project and budget code."""
        members = sorted(_text(m) for m in await self.redis.smembers(self.key("h", epoch(hour))))
        pipe = self.redis.pipeline(transaction=False)
        for member in members:
            pipe.hgetall(self.key("i", epoch(hour), member))
        found: dict[UUID, tuple[Usage, UUID, UUID]] = {}
        for member, values in zip(members, await pipe.execute(), strict=True):
            project = values.get(b"project")
            budget = values.get(b"budget")
            if project is None or budget is None:
                continue  # its keys were lost: a rebuild restores them
            found[UUID(member)] = (
                Usage.from_hash(values),
                UUID(_text(project)),
                UUID(_text(budget)),
            )
        return found

    async def idle(self) -> list[Idle]:
        """Every instance in an idle stretch now."""
        members = sorted(_text(m) for m in await self.redis.smembers(self.key("idlers")))
        pipe = self.redis.pipeline(transaction=False)
        for member in members:
            pipe.hgetall(self.key("idle", member))
        found = []
        for member, raw in zip(members, await pipe.execute(), strict=True):
            values = {_text(k): _text(v) for k, v in raw.items()}
            if "since_ms" not in values or "project" not in values:
                continue
            found.append(
                Idle(
                    instance_id=UUID(member),
                    project_id=UUID(values["project"]),
                    since=datetime.fromtimestamp(int(values["since_ms"]) / 1000, UTC),
                    until=datetime.fromtimestamp(int(values.get("to_ms", 0)) / 1000, UTC),
                    cpu_ns=int(values.get("cpu_ns", 0)),
                    capacity_ns=int(values.get("capacity_ns", 0)),
                    reported="reported" in values,
                )
            )
        return found

    async def mark_reported(self, instance_id: UUID) -> None:
        """Remember that an idle stretch was reported (until the instance is busy again)."""
        await self.redis.hset(self.key("idle", instance_id), "reported", "1")

    async def intact(self) -> bool:
        """True unless Redis lost the counters since they were last known complete."""
        return bool(await self.redis.exists(self.key("intact")))

    async def mark_intact(self) -> None:
        """Say the counters are complete (a fresh deployment, or a finished rebuild)."""
        await self.redis.set(self.key("intact"), "1")
