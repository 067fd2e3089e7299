"""Kill the gateway with SIGKILL in the middle of load, start it again, and check the log against what clients saw.

Used by the kill-9 test (tests/gateway/test_kill9.py) and benchmarks/guard_live.py. Each request
carries a unique prompt; a request is *acknowledged* when its client got a 200 with the whole answer
(for a stream, the final `data: [DONE]`). After the restart every acknowledged prompt must be in the
log exactly once, and the log's export must read back through `stillroom.guard.schema.ingest`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gateway(upstream: str, log: Path, keys: Path, port: int, extra: list[str] | None = None,
                  stderr_path: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stillroom", "guard", "gateway", "--upstream", upstream, "--log", str(log),
           "--keys", str(keys), "--port", str(port), *(extra or [])]
    err = open(stderr_path, "ab") if stderr_path else subprocess.DEVNULL
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode} before it was healthy")
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the gateway did not become healthy in time")


@dataclass
class KillReport:
    requests: int = 0
    acknowledged: int = 0
    failed: int = 0
    logged_after_kill: int = 0  # acknowledged interactions found in the log after the restart
    lost: int = 0  # acknowledged but not in the log
    duplicated: int = 0  # in the log more than once
    interrupted_streams: int = 0  # logged at their start, cut by the kill
    rows_in_log: int = 0
    ingested: int = 0  # acknowledged interactions that the export read back through guard's ingest
    served_after_restart: int = 0
    lost_prompts: list[str] = field(default_factory=list)


async def _load(url: str, key: str, acknowledged: list[str], sent: list[str], failures: list[str], total: int,
                concurrency: int, stream_every: int, stop: asyncio.Event, prefix: str) -> None:
    headers = {"authorization": f"Bearer {key}"}
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=10.0, limits=limits) as client:
        async def worker() -> None:
            for i in counter:
                if stop.is_set():
                    return
                prompt = f"{prefix}-{i}"
                stream = stream_every > 0 and i % stream_every == 0
                body = {"model": "echo", "messages": [{"role": "user", "content": prompt}], "stream": stream}
                sent.append(prompt)
                try:
                    if stream:
                        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as reply:
                            text = b"".join([c async for c in reply.aiter_raw()])
                            if reply.status_code == 200 and text.rstrip().endswith(b"data: [DONE]"):
                                acknowledged.append(prompt)
                            else:
                                failures.append(prompt)
                    else:
                        reply = await client.post("/v1/chat/completions", json=body, headers=headers)
                        (acknowledged if reply.status_code == 200 else failures).append(prompt)
                except (httpx.HTTPError, OSError):
                    failures.append(prompt)
                    if stop.is_set():
                        return
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def kill_and_restart(upstream: str, folder: Path, key: str, *, kill_after: int = 300, total: int = 5000,
                     concurrency: int = 32, stream_every: int = 5, timeout: float = 60.0) -> KillReport:
    """Load a gateway (a subprocess), SIGKILL it after `kill_after` acknowledgements, restart it, compare the log."""
    log, keys = folder / "log.db", folder / "keys.json"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_gateway(upstream, log, keys, port, stderr_path=folder / "gateway.stderr")
    wait_healthy(url, process)
    acknowledged: list[str] = []
    sent: list[str] = []
    failures: list[str] = []

    async def run() -> None:
        stop = asyncio.Event()

        async def killer() -> None:
            deadline = time.monotonic() + timeout
            while len(acknowledged) < kill_after and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            process.send_signal(signal.SIGKILL)
            stop.set()

        await asyncio.gather(_load(url, key, acknowledged, sent, failures, total, concurrency, stream_every, stop, "kill9"),
                             killer())

    asyncio.run(run())
    process.wait(timeout=30)
    report = KillReport(requests=len(sent), acknowledged=len(acknowledged), failed=len(failures))

    process = start_gateway(upstream, log, keys, port, stderr_path=folder / "gateway.stderr")
    try:
        wait_healthy(url, process)
        after = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                           json={"model": "echo", "messages": [{"role": "user", "content": "after-restart"}]}, timeout=10)
        report.served_after_restart = int(after.status_code == 200)
        conn = sqlite3.connect(f"file:{log}?mode=ro", uri=True)
        prompts = Counter(p for (p,) in conn.execute("SELECT prompt FROM interactions"))
        report.rows_in_log = sum(prompts.values())
        report.interrupted_streams = conn.execute("SELECT COUNT(*) FROM interactions WHERE state='interrupted'").fetchone()[0]
        conn.close()
        report.logged_after_kill = sum(1 for p in acknowledged if prompts.get(p, 0) >= 1)
        report.duplicated = sum(1 for n in prompts.values() if n > 1)
        report.lost_prompts = [p for p in acknowledged if prompts.get(p, 0) == 0][:20]
        report.lost = report.acknowledged - report.logged_after_kill

        from stillroom.guard.gateway.store import export
        from stillroom.guard.schema import ingest

        export(log, folder / "after-kill.parquet")
        seen = set(ingest(folder / "after-kill.parquet").frame["prompt"])
        report.ingested = sum(1 for p in acknowledged if p in seen)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    return report
