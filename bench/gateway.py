"""Authenticated ``GET /api/v1/instances`` per second through the whole platform, against a bare
FastAPI endpoint answering the same JSON from memory.

Setup (not timed): the whole platform as ``just dev`` runs it (``scripts/devstack.py``, as the
HTTP tests start it): NATS JetStream from the wheel with one user per service, a fresh database
on the local Postgres (dropped at the end), the local Redis (keys under prefixes of this run,
deleted at the end), every service as its own process and the demo-dc provisioner driving
simulated libvirt hosts. Logs at WARNING in every service (as every bench). The gateway's
per-token rate limit is raised for the run (``rate_limit_per_s`` / ``rate_limit_burst`` in the
JSON line) so that one token may carry the whole load; the limiter itself still runs on every
request. Everything else is the services' defaults.

Through the API, as the demo researcher: ``INSTANCES`` (default 20) ``small`` instances of
``ubuntu-24.04`` requested in the demo project on its grant (an admin raises the project's
quota first when it would not admit them), waited for until all run; then
``GET /api/v1/instances?limit=INSTANCES`` is fetched once and kept.

Ours: that request, authenticated with the researcher's access token: the gateway's edge
(request id, limits, rate limiting, security headers), then NATS request/reply to the inventory
service, which verifies the token, reads the page from Postgres under the caller's visibility
and answers; the gateway returns it. A fresh token is taken before every load run and must
outlive it (access tokens live 15 minutes by default).

Baseline, same run, same machine: a FastAPI app in its own process, served by uvicorn exactly
as the gateway is (one process, uvicorn's defaults: uvloop and httptools, ``log_config=None``),
whose ``GET /api/v1/instances`` returns the kept page from memory, serialized per request as the
gateway serializes its answers (``json.dumps`` into a ``Response``). No auth, no bus, no
database, none of the gateway's middleware.

Load: ``wrk`` in its own process (``just bootstrap`` installs it), ``CONNECTIONS`` = 64
keep-alive connections on 2 threads, ``--latency``, the same ``Authorization`` header for both;
a short warm-up run of each first (not counted), then the baseline measured, then ours, each
``--duration`` seconds (default 15). A small Lua ``done()`` hook prints wrk's summary as JSON.
``errors`` counts non-2xx/3xx answers, socket errors (connect, read, write) and timeouts (2 s):
a valid run has none.

Fields: ``value`` our requests/s; ``baseline`` bare requests/s; ``ratio`` = value ÷ baseline
(target ≥ 0.25); ``p99_ms`` (target ≤ 50) and ``p50_ms`` of ours; ``baseline_p99_ms`` and
``baseline_p50_ms``; ``errors`` and ``baseline_errors``; ``connections``; ``duration_s``;
``instances`` (items in the page); ``page_bytes``; ``rate_limit_per_s``;
``rate_limit_burst``; ``cpu_pct`` and ``baseline_cpu_pct``: where CPU went during each measured
run, in percent of one core, per process (``machine`` is the whole machine, other work
included); ``load_1m`` when the bench started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.common import report
from compgrid_runtime.embedded import free_port
from tests.harness.platform import answers, start_platform, stop_platform

ROOT = Path(__file__).resolve().parents[1]
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = os.environ.get("COMPGRID_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
SERVICES = ("auth", "inventory", "provisioner", "metering", "billing", "gateway")
RESEARCHER = ("researcher@compgrid.example", "demo-researcher-password")
ADMIN = ("admin@compgrid.example", "demo-admin-password")
CONNECTIONS = 64
THREADS = 2
WARMUP_S = 3
RATE_LIMIT_PER_S = 1_000_000
RATE_LIMIT_BURST = 1_000_000
INSTANCES = int(os.environ.get("COMPGRID_BENCH_INSTANCES", "20"))
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %.0f, "duration_us": %.0f, "connect": %.0f, "read": %.0f, "write": %.0f, '
    .. '"status": %.0f, "timeout": %.0f, "p50_us": %.0f, "p99_us": %.0f, "max_us": %.0f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def log(message: str) -> None:
    """Progress to stderr (stdout carries only the JSON line)."""
    print(f"[gateway] {message}", file=sys.stderr, flush=True)


# --- the baseline server ------------------------------------------------------------------------


def serve_bare(port: int, page_file: Path) -> None:
    """Serve the kept page at ``GET /api/v1/instances`` from memory (the baseline process)."""
    import uvicorn
    from fastapi import FastAPI, Response

    page = json.loads(page_file.read_text())
    app = FastAPI()

    @app.get("/api/v1/instances")
    async def instances() -> Response:
        return Response(json.dumps(page, separators=(",", ":")), media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None)


# --- processes and CPU --------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[int(entry.name)] = (int(stat[1]), cmdline)
    return found


def watched(launcher: int, bare: int, database: str) -> dict[int, str]:
    """The processes whose CPU the bench reports: pid -> component."""
    names = {}
    for pid, (parent, cmdline) in _processes().items():
        if pid == bare:
            names[pid] = "bare"
        elif database in cmdline and cmdline.startswith("postgres"):
            names[pid] = "postgres"
        elif parent == launcher:
            service = next((s for s in SERVICES if f"compgrid_{s}" in cmdline), None)
            if service:
                names[pid] = service
            elif "nats-server" in cmdline:
                names[pid] = "nats"
    return names


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


class CpuMeter:
    """CPU used by each watched process (and wrk, a child) between ``start`` and ``stop``; a
    process that appears in between (a new database connection) counts whole."""

    def __init__(self, launcher: int, bare: int, database: str) -> None:
        self.watch = (launcher, bare, database)

    def start(self) -> None:
        """Take the first sample."""
        self.before = {pid: _cpu_seconds(pid) for pid in watched(*self.watch)}
        self.children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.machine = _machine_busy()
        self.started = time.perf_counter()

    def stop(self) -> dict[str, float]:
        """Percent of one core per component since ``start``."""
        elapsed = time.perf_counter() - self.started
        shares: dict[str, float] = {}
        for pid, name in watched(*self.watch).items():
            used = max(0.0, _cpu_seconds(pid) - self.before.get(pid, 0.0))
            shares[name] = shares.get(name, 0.0) + used
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        shares["wrk"] = (after.ru_utime + after.ru_stime) - (
            self.children.ru_utime + self.children.ru_stime
        )
        busy, total = _machine_busy()
        cores = os.cpu_count() or 1
        machine = (busy - self.machine[0]) / max(1, total - self.machine[1]) * cores * elapsed
        shares["machine"] = machine
        return {name: round(100 * used / elapsed, 1) for name, used in sorted(shares.items())}


def start_bare(page_file: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the baseline server in its own process; return it and its URL once it answers."""
    port = free_port()
    bare = subprocess.Popen(
        [sys.executable, "-m", "bench.gateway", "--serve-bare", str(port), str(page_file)],
        cwd=ROOT,
        stdout=sys.stderr,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api/v1/instances"
    if not answers(url, bare, timeout_s=30):
        bare.kill()
        raise SystemExit("the baseline server did not start")
    return bare, url


def stop_bare(bare: subprocess.Popen[bytes]) -> None:
    """SIGTERM the baseline server and wait for it."""
    if bare.poll() is None:
        bare.send_signal(signal.SIGTERM)
    try:
        bare.wait(timeout=10)
    except subprocess.TimeoutExpired:
        bare.kill()
        bare.wait()


# --- through the API ----------------------------------------------------------------------------


def login(http: httpx.Client, who: tuple[str, str]) -> tuple[str, float]:
    """Sign in; return the access token and when it expires (epoch seconds)."""
    reply = http.post("/auth/login", json={"email": who[0], "password": who[1]})
    if reply.status_code != 200:
        raise SystemExit(f"login of {who[0]} failed: {reply.status_code} {reply.text}")
    token: str = reply.json()["access_token"]
    claims = token.split(".")[1]
    payload = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    return token, float(payload["exp"])


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a token."""
    return {"Authorization": f"Bearer {token}"}


def ensure_quota(http: httpx.Client, project_id: str, count: int) -> None:
    """Raise the project's quota (as an admin) when ``count`` more small instances would not
    fit; leave it alone otherwise."""
    admin, _ = login(http, ADMIN)
    reply = http.get(f"/projects/{project_id}/policy", headers=bearer(admin))
    reply.raise_for_status()
    policy = reply.json()
    quota, used = policy["effective_quota"], policy["used"]
    need = {"max_instances": count, "max_vcpus": count, "max_memory_mib": count * 2048}
    change = {
        key: used[key] + extra
        for key, extra in need.items()
        if quota[key] is not None and used[key] + extra > quota[key]
    }
    if change:
        log(f"raising the project's quota: {change}")
        reply = http.put(f"/projects/{project_id}/quota", json=change, headers=bearer(admin))
        reply.raise_for_status()


def prepare_page(http: httpx.Client, count: int) -> dict[str, Any]:
    """Request ``count`` instances as the researcher, wait until they run, return the page."""
    token, _ = login(http, RESEARCHER)
    reply = http.get("/budget-codes", headers=bearer(token))
    reply.raise_for_status()
    code = next(c for c in reply.json() if c["status"] == "active")
    project_id = code["project_id"]
    ensure_quota(http, project_id, count)
    ids = []
    for n in range(count):
        body = {
            "name": f"analysis-{n + 1:02d}",
            "project_id": project_id,
            "budget_code_id": code["id"],
            "instance_type": "small",
            "image": "ubuntu-24.04",
        }
        headers = {**bearer(token), "Idempotency-Key": str(uuid.uuid4())}
        reply = http.post("/instances", json=body, headers=headers)
        if reply.status_code != 202:
            raise SystemExit(f"instance request refused: {reply.status_code} {reply.text}")
        ids.append(reply.json()["id"])
    log(f"requested {count} instances; waiting until they run")
    deadline = time.monotonic() + 180
    while True:
        reply = http.get(
            "/instances", params={"project_id": project_id, "limit": 100}, headers=bearer(token)
        )
        reply.raise_for_status()
        states = {i["id"]: i["state"] for i in reply.json()["items"] if i["id"] in ids}
        bad = {s for s in states.values() if s in ("failed", "rejected", "pending_approval")}
        if bad:
            raise SystemExit(f"instances did not start: {sorted(bad)}")
        if len(states) == count and set(states.values()) == {"running"}:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"instances not running after 180 s: {states}")
        time.sleep(0.5)
    reply = http.get("/instances", params={"limit": count}, headers=bearer(token))
    reply.raise_for_status()
    page: dict[str, Any] = reply.json()
    if len(page["items"]) != count:
        raise SystemExit(f"the page holds {len(page['items'])} instances, not {count}")
    return page


# --- load ---------------------------------------------------------------------------------------


def run_wrk(url: str, token: str, duration_s: int, script: Path) -> dict[str, float]:
    """Run wrk against ``url``; return its summary (requests/s, latencies in ms, errors)."""
    command = [
        "wrk",
        "-c",
        str(CONNECTIONS),
        "-t",
        str(THREADS),
        "-d",
        f"{duration_s}s",
        "--latency",
        "-s",
        str(script),
        "-H",
        f"Authorization: Bearer {token}",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr}")
    line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith("{"))
    summary = json.loads(line)
    errors = sum(summary[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {
        "rps": summary["requests"] / (summary["duration_us"] / 1e6),
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "max_ms": summary["max_us"] / 1000,
        "errors": errors,
        "requests": summary["requests"],
    }


def fresh_token(http: httpx.Client, lasting_s: float) -> str:
    """A researcher token that outlives the next ``lasting_s`` seconds."""
    token, expires = login(http, RESEARCHER)
    if expires - time.time() < lasting_s + 30:
        raise SystemExit(f"access tokens expire within {expires - time.time():.0f} s: too short")
    return token


def measure(
    name: str, url: str, token_for: Any, duration_s: int, script: Path, meter: CpuMeter
) -> tuple[dict[str, float], dict[str, float]]:
    """Warm up, then measure one endpoint; return wrk's summary and the CPU shares."""
    log(f"{name}: warm-up {WARMUP_S} s")
    run_wrk(url, token_for(WARMUP_S), WARMUP_S, script)
    token = token_for(duration_s)
    log(f"{name}: measuring {duration_s} s at {CONNECTIONS} connections")
    meter.start()
    result = run_wrk(url, token, duration_s, script)
    cpu = meter.stop()
    log(
        f"{name}: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.2f} ms,"
        f" p99 {result['p99_ms']:.2f} ms, errors {result['errors']:.0f}; cpu % {cpu}"
    )
    return result, cpu


# --- the run ------------------------------------------------------------------------------------


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(os.environ.get("COMPGRID_BENCH_DATABASE_URL", LOCAL_POSTGRES))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _forget_redis(prefixes: list[str]) -> None:
    """Delete the run's keys from Redis."""
    from redis import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        for prefix in prefixes:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


def main() -> None:
    """Run the benchmark and print its JSON line."""
    summary = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog="just bench gateway", description=summary)
    parser.add_argument("--duration", type=int, default=15, help="seconds of each measured run")
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "PAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), Path(args.serve_bare[1]))
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run `just bootstrap` (Debian package wrk)")
    load_1m = os.getloadavg()[0]
    run = uuid.uuid4().hex[:8]
    database = f"compgrid_bench_{run}"
    admin = os.environ.get("COMPGRID_BENCH_DATABASE_URL", LOCAL_POSTGRES)
    server = admin.rpartition("/")[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    prefixes = [f"bench:{run}:auth:", f"bench:{run}:metering:", f"bench:{run}:gateway:idem:"]
    env = {
        **os.environ,
        "COMPGRID_DATABASE_URL": f"{server}/{database}",
        "COMPGRID_REDIS_URL": REDIS_URL,
        "COMPGRID_GATEWAY_API_PORT": str(free_port()),
        "COMPGRID_GATEWAY_RATE_LIMIT_PER_S": str(RATE_LIMIT_PER_S),
        "COMPGRID_GATEWAY_RATE_LIMIT_BURST": str(RATE_LIMIT_BURST),
        "COMPGRID_AUTH_REDIS_PREFIX": prefixes[0],
        "COMPGRID_METERING_REDIS_PREFIX": prefixes[1],
        "COMPGRID_GATEWAY_IDEMPOTENCY_PREFIX": prefixes[2],
        **{f"COMPGRID_{s.upper()}_LOG_LEVEL": "WARNING" for s in SERVICES},
    }
    env.pop("COMPGRID_NATS_URL", None)  # NATS from the wheel, one user per service
    asyncio.run(_admin(f'CREATE DATABASE "{database}"'))
    launcher = bare = None
    try:
        with tempfile.TemporaryDirectory(prefix="compgrid-bench-") as tmp:
            state = Path(tmp)
            log(f"starting the platform (database {database})")
            launcher, base_url = start_platform(state, env)
            log(f"platform ready: {base_url}")
            api = f"{base_url}/api/v1"
            with httpx.Client(base_url=api, timeout=30) as http:
                page = prepare_page(http, INSTANCES)
                page_file = state / "page.json"
                page_file.write_text(json.dumps(page))
                page_bytes = len(json.dumps(page, separators=(",", ":")).encode())
                script = state / "summary.lua"
                script.write_text(WRK_SCRIPT)
                bare, bare_url = start_bare(page_file)
                meter = CpuMeter(launcher.pid, bare.pid, database)
                researcher, _ = login(http, RESEARCHER)
                base, base_cpu = measure(
                    "bare", bare_url, lambda _s: researcher, args.duration, script, meter
                )
                ours, cpu = measure(
                    "gateway",
                    f"{api}/instances?limit={INSTANCES}",
                    lambda s: fresh_token(http, s),
                    args.duration,
                    script,
                    meter,
                )
                check = http.get(
                    "/instances",
                    params={"limit": INSTANCES},
                    headers=bearer(fresh_token(http, 0)),
                )
                if check.json()["items"] != page["items"]:
                    log("note: the page changed during the run")
            log("stopping the platform")
            stop_bare(bare)
            bare = None
            stop_platform(launcher)
            launcher = None
    finally:
        if bare is not None:
            stop_bare(bare)
        if launcher is not None:
            stop_platform(launcher)
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        _forget_redis(prefixes)
    report(
        "gateway",
        ours["rps"],
        "requests/s",
        base["rps"],
        ours["rps"] / base["rps"],
        p99_ms=round(ours["p99_ms"], 2),
        p50_ms=round(ours["p50_ms"], 2),
        errors=int(ours["errors"]),
        baseline_p99_ms=round(base["p99_ms"], 2),
        baseline_p50_ms=round(base["p50_ms"], 2),
        baseline_errors=int(base["errors"]),
        connections=CONNECTIONS,
        duration_s=args.duration,
        instances=len(page["items"]),
        page_bytes=page_bytes,
        rate_limit_per_s=RATE_LIMIT_PER_S,
        rate_limit_burst=RATE_LIMIT_BURST,
        cpu_pct=cpu,
        baseline_cpu_pct=base_cpu,
        load_1m=round(load_1m, 2),
    )


if __name__ == "__main__":
    main()
