"""Benchmark: the guard gateway live: added latency under load, kill -9, and harvest before detection on a replay.

    .venv/bin/python benchmarks/guard_live.py                    # everything (about 12 minutes on 2 cores)
    .venv/bin/python benchmarks/guard_live.py --sections load    # one part: load, kill9, replay
    .venv/bin/python benchmarks/guard_live.py --quick            # 10 s load phases, a smaller replay (a smoke run)

Everything listens on 127.0.0.1. Parts:

- **load**: an echo upstream (`stillroom.guard.gateway.echo`, fixed answer, no model) is loaded at
  `--rate` requests/s for `--seconds` s three times in the same run: directly, through the gateway,
  and through LiteLLM's proxy (`litellm[proxy]`, in its own venv: `--litellm PATH/TO/litellm`, or
  /tmp/litellm-venv/bin/litellm when present). The load generator is an open-loop bounded async client
  (`open_loop`: requests go out on schedule whatever the latency, timed from their scheduled start, like
  wrk2); `--generator wrk` uses `wrk` (Debian package) instead, closed loop, each connection paced by a Lua
  `delay()`, which offers less than `--rate` once latency grows. The achieved rate is reported.
  Added latency = gateway percentile - direct percentile.
- **kill9**: the gateway (a subprocess) is SIGKILLed under load and restarted;
  `stillroom.guard.gateway.faults.kill_and_restart` compares what clients saw acknowledged with the log.
- **replay**: a simulated day with campaigns (`stillroom.guard.simulate`) is replayed through the gateway
  at accelerated time (`--replay-seconds` of wall time for the day); each scan self-calibrates on its
  window (`--calibration-mode self`; `clean` loads one calibration from a benign day instead); scans
  every `--scan-interval` s of log time, and the policy `on_campaign: block`. For each campaign: the
  share of its interactions served before its accounts were flagged, and before they were throttled or
  blocked.

Each finished part is kept in runs/guard_live/<part>.json and not redone on a rerun of the same commit
(`--fresh` redoes them). Writes benchmarks/results/guard_live.json and its line in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, STARTED, write_result  # noqa: E402

from stillroom.guard.gateway.faults import free_port, kill_and_restart, start_gateway, wait_healthy  # noqa: E402
from stillroom.guard.gateway.keys import KeyStore  # noqa: E402

RUN = ROOT / "runs" / "guard_live"
PY = sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"model": "echo", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
function delay()
  return %(delay_ms)d
end
function done(summary, latency, requests)
  io.write(string.format("RESULT {\\"requests\\": %%d, \\"errors_status\\": %%d, \\"errors_connect\\": %%d, \\"errors_timeout\\": %%d, \\"duration_us\\": %%d, \\"p50_us\\": %%d, \\"p90_us\\": %%d, \\"p99_us\\": %%d, \\"mean_us\\": %%f}\\n",
    summary.requests, summary.errors.status, summary.errors.connect, summary.errors.timeout, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


# ---- processes ----------------------------------------------------------------------
def spawn(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env or ENV, cwd=str(ROOT))


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_http(url: str, process: subprocess.Popen, timeout: float = 120.0, headers: dict | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2.0, headers=headers).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s")


def start_echo(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = spawn([PY, "-m", "stillroom.guard.gateway.echo", str(port)], folder / "echo.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/v1/models", process)
    return process, url


def find_litellm(given: str | None) -> str | None:
    for candidate in [given, "/tmp/litellm-venv/bin/litellm", shutil.which("litellm")]:
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def start_litellm(binary: str, upstream: str, folder: Path) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    key = "sk-litellm-bench"
    config = folder / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: echo\n"
        "    litellm_params: {model: openai/echo, api_base: '" + upstream + "/v1', api_key: 'none'}\n"
        "general_settings:\n"
        f"  master_key: {key}\n"
        "litellm_settings:\n"
        "  drop_params: true\n", encoding="utf-8")
    env = {k: v for k, v in ENV.items() if not k.startswith("PYTHON")}
    env["LITELLM_LOG"] = "ERROR"
    process = spawn([binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                    folder / "litellm.log", env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health/liveliness", process, timeout=180)
    return process, url, key


# ---- load ---------------------------------------------------------------------------
LOAD_BODY = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "What is the capital of France?"}],
                        "max_tokens": 16}).encode()


def open_loop(url: str, key: str, rate: float, seconds: int, name: str, max_in_flight: int = 256) -> dict:
    """Send `rate` requests/s for `seconds` s on schedule, whatever the latency (an open loop, like wrk2).

    Latency is timed from each request's scheduled start, so a server (or a client) that falls behind shows in
    the figures instead of lowering the offered rate. At most `max_in_flight` requests are open; a request due
    while that many are open is counted as dropped.
    """
    import uvloop

    from stillroom.guard.gateway.upstream import UpstreamError, UpstreamPool

    async def run() -> dict:
        pool = UpstreamPool(url, max_idle=max_in_flight, timeout=10.0)
        headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
        latencies: list[float] = []
        errors = dropped = 0
        in_flight = 0
        clock = time.perf_counter  # uvloop's loop.time() has millisecond resolution only
        total = int(rate * seconds)
        start = clock() + 0.2

        async def one(due: float) -> None:
            nonlocal errors, in_flight
            try:
                reply = await pool.request("POST", "/v1/chat/completions", LOAD_BODY, headers)
                await reply.read()
                if reply.status == 200:
                    latencies.append(clock() - due)
                else:
                    errors += 1
            except UpstreamError:
                errors += 1
            finally:
                in_flight -= 1

        tasks = []
        for i in range(total):
            due = start + i / rate
            wait = due - clock()
            if wait > 0:
                await asyncio.sleep(wait)
            if in_flight >= max_in_flight:
                dropped += 1
                continue
            in_flight += 1
            tasks.append(asyncio.ensure_future(one(due)))
        await asyncio.gather(*tasks)
        elapsed = clock() - start
        pool.close()
        lat = sorted(latencies)

        def pct(q: float) -> float:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3) if lat else float("nan")

        return {"target": name, "requests": total, "ok": len(lat), "errors": errors, "dropped": dropped,
                "achieved_rps": round(len(lat) / elapsed, 1), "p50_ms": pct(0.50), "p90_ms": pct(0.90),
                "p99_ms": pct(0.99), "mean_ms": round(sum(lat) / max(1, len(lat)) * 1000, 3)}

    return uvloop.run(run())


def wrk(url: str, key: str, rate: float, seconds: int, connections: int, folder: Path, name: str) -> dict:
    delay_ms = max(1, round(connections / rate * 1000))
    script = folder / f"{name}.lua"
    script.write_text(WRK_SCRIPT % {"key": key, "delay_ms": delay_ms}, encoding="utf-8")
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script),
           url + "/v1/chat/completions"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    match = re.search(r"RESULT (\{.*\})", out.stdout)
    if not match:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(match.group(1))
    return {"target": name, "requests": r["requests"], "achieved_rps": round(r["requests"] / (r["duration_us"] / 1e6), 1),
            "errors": r["errors_status"] + r["errors_connect"] + r["errors_timeout"],
            "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
            "mean_ms": round(r["mean_us"] / 1000, 3), "connections": connections, "delay_ms": delay_ms}


def part_load(args, folder: Path) -> dict:
    if args.generator == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("--generator wrk needs wrk: apt-get install -y wrk")
    echo, upstream = start_echo(folder)
    processes = [echo]
    try:
        keys = folder / "keys.json"
        store = KeyStore(keys)
        key = store.add("load")
        admin = store.add_admin()
        port = free_port()
        gateway = start_gateway(upstream + "/v1", folder / "load-log.db", keys, port, stderr_path=folder / "gateway.log")
        processes.append(gateway)
        gw_url = f"http://127.0.0.1:{port}"
        wait_healthy(gw_url, gateway)
        targets = [("direct", upstream, "none"), ("stillroom", gw_url, key)]
        binary = find_litellm(args.litellm)
        peer_note = None
        if binary:
            try:
                litellm, lt_url, lt_key = start_litellm(binary, upstream, folder)
                processes.append(litellm)
                targets.append(("litellm", lt_url, lt_key))
            except RuntimeError as exc:
                peer_note = f"LiteLLM proxy did not start: {exc}"
        else:
            peer_note = "litellm not found (pip install 'litellm[proxy]' in a venv of its own; pass --litellm)"
        if args.generator == "wrk":
            def measure(url, k, seconds, name):
                return wrk(url, k, args.rate, seconds, args.connections, folder, name)
            generator = (f"wrk 4.1, closed loop (-t1 -c{args.connections}, each connection paced by a Lua delay of "
                         f"{max(1, round(args.connections / args.rate * 1000))} ms)")
        else:
            def measure(url, k, seconds, name):
                return open_loop(url, k, args.rate, seconds, name)
            generator = ("open loop, a bounded async client (benchmarks/guard_live.py open_loop: uvloop and the gateway's "
                         "httptools client; latency from each request's scheduled start; at most 256 in flight)")
        for name, url, k in targets:  # warm-up: connections, caches, first-request paths
            measure(url, k, 3, f"warm-{name}")
        rows = [measure(url, k, args.seconds, name) for name, url, k in targets]
        by = {r["target"]: r for r in rows}
        out = {"load_generator": generator,
               "offered_rps": args.rate, "seconds": args.seconds, "runs": rows,
               "p50_added_ms": round(by["stillroom"]["p50_ms"] - by["direct"]["p50_ms"], 3),
               "p99_added_ms": round(by["stillroom"]["p99_ms"] - by["direct"]["p99_ms"], 3)}
        if "litellm" in by:
            out["peer"] = {"name": "litellm", "version": litellm_version(binary),
                           "p50_added_ms": round(by["litellm"]["p50_ms"] - by["direct"]["p50_ms"], 3),
                           "p99_added_ms": round(by["litellm"]["p99_ms"] - by["direct"]["p99_ms"], 3),
                           "errors": by["litellm"]["errors"], "achieved_rps": by["litellm"]["achieved_rps"]}
        else:
            out["peer"] = {"name": "litellm", "note": peer_note}
        out["log"] = log_costs(gw_url, admin, folder / "load-log.db", by["stillroom"]["requests"])
        return out
    finally:
        for process in reversed(processes):
            stop(process)


def litellm_version(binary: str) -> str:
    out = subprocess.run([str(Path(binary).parent / "pip"), "show", "litellm"], capture_output=True, text=True)
    match = re.search(r"Version: (\S+)", out.stdout)
    return match.group(1) if match else "unknown"


def log_costs(url: str, admin: str, db: Path, requests: int) -> dict:
    """What the durable log cost under this load, from the gateway's own metrics."""
    import sqlite3

    import httpx

    text = httpx.get(url + "/metrics", headers={"authorization": f"Bearer {admin}"}, timeout=10).text
    values = {m.group(1): float(m.group(2)) for m in re.finditer(r"^stillroom_gateway_(log_\w+) (\S+)$", text, re.M)}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = conn.execute("SELECT COUNT(*) FROM interactions").fetchone()[0]
    conn.close()
    commits = values.get("log_commits_total", 0) or 1
    return {"rows_logged": rows, "requests_through_gateway_measured": requests,
            "commits": int(values.get("log_commits_total", 0)),
            "rows_per_commit": round(values.get("log_rows_total", 0) / commits, 2),
            "mean_commit_ms": round(values.get("log_commit_seconds_total", 0) / commits * 1000, 3),
            "largest_group": int(values.get("log_largest_group", 0)), "file_bytes": db.stat().st_size}


# ---- kill -9 -------------------------------------------------------------------------
def part_kill9(args, folder: Path) -> dict:
    echo, upstream = start_echo(folder)
    try:
        store = KeyStore(folder / "keys.json")
        key = store.add("kill9")
        store.add_admin()
        report = kill_and_restart(upstream + "/v1", folder, key, kill_after=args.kill_after, total=20 * args.kill_after,
                                  concurrency=32, stream_every=5)
    finally:
        stop(echo)
    out = {k: v for k, v in report.__dict__.items() if k != "lost_prompts"}
    out["lost_prompts"] = report.lost_prompts
    return out


# ---- replay -------------------------------------------------------------------------
def serve_replay_upstream(answers: Path, port: int) -> None:
    """An upstream that answers each simulated prompt with its simulated response and token counts."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    table = json.loads(answers.read_text(encoding="utf-8"))

    async def chat(request):
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        text, p_tokens, tokens = table.get(prompt, ["", 0, 0])
        return JSONResponse({"id": "chatcmpl-replay", "object": "chat.completion", "created": 0, "model": "replay",
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": p_tokens, "completion_tokens": tokens,
                                       "total_tokens": p_tokens + tokens}})

    uvicorn.run(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]), host="127.0.0.1", port=port,
                log_level="warning", access_log=False)


def scenario(args):
    from stillroom.guard.config import CampaignSpec, Populations, SimulateConfig
    from stillroom.guard.simulate import simulate

    scale = 0.5 if args.quick else 1.0
    benign = Populations(chat=int(1000 * scale), apps=int(30 * scale), evals=4, labelers=8, researchers=int(30 * scale))
    campaigns = [CampaignSpec(name=f"campaign-{style}", style=style, accounts=int(n * scale))
                 for style, n in (("mixed", 40), ("blatant", 20), ("rotating", 40))]
    calibration_day = SimulateConfig(seed=1000, benign=Populations(chat=benign.chat * 3, apps=benign.apps * 3, evals=12,
                                                                   labelers=24, researchers=benign.researchers * 3),
                                     campaigns=[])
    cal_log = simulate(calibration_day)[0] if args.calibration_mode == "clean" else None
    log, truth = simulate(SimulateConfig(seed=0, benign=benign, campaigns=campaigns))
    return cal_log, log, truth


async def replay_traffic(url: str, log, keys: dict[str, str], seconds: float, concurrency: int) -> dict:
    from stillroom.guard.gateway.upstream import UpstreamError, UpstreamPool

    ts = log["ts"].astype("int64").to_numpy() / 1e9
    start_log, start_wall = float(ts[0]), time.monotonic() + 1.0
    speedup = (float(ts[-1]) - start_log) / seconds
    queue: asyncio.Queue = asyncio.Queue(maxsize=4 * concurrency)
    lateness: list[float] = []
    codes: dict[int, int] = {}
    records = log.to_dict("records")

    async def producer() -> None:
        for t, rec in zip(ts, records):
            await queue.put((float(t), rec))
        for _ in range(concurrency):
            await queue.put(None)

    async def worker(client: UpstreamPool) -> None:
        while (item := await queue.get()) is not None:
            t, rec = item
            due = start_wall + (t - start_log) / speedup
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                lateness.append(-wait)
            body = {"model": rec["model"] or "replay", "messages": [{"role": "user", "content": rec["prompt"]}],
                    "n": int(rec["n"] or 1), "max_tokens": int(rec["max_tokens"] or 0) or None}
            if rec["temperature"] == rec["temperature"]:  # not NaN
                body["temperature"] = float(rec["temperature"])
            if rec["logprobs"]:
                body["logprobs"] = True
                if rec["top_logprobs"]:
                    body["top_logprobs"] = int(rec["top_logprobs"])
            headers = {"content-type": "application/json", "authorization": f"Bearer {keys[rec['account']]}",
                       "x-stillroom-ts": repr(t),
                       "x-forwarded-for": rec["ip"] or "0.0.0.0", "x-stillroom-network": rec["network"] or "",
                       "user-agent": rec["user_agent"] or "replay"}
            payload = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
            try:
                reply = await client.request("POST", "/v1/chat/completions", payload, headers)
                await reply.read()
                codes[reply.status] = codes.get(reply.status, 0) + 1
            except UpstreamError:
                codes[0] = codes.get(0, 0) + 1

    client = UpstreamPool(url, timeout=30.0)  # the gateway's own lean client: the sender must not be the bottleneck
    tick = time.monotonic()
    await asyncio.gather(producer(), *(worker(client) for _ in range(concurrency)))
    wall = time.monotonic() - tick
    client.close()
    late = sorted(lateness)
    return {"speedup": round(speedup, 1), "wall_s": round(wall, 1), "sent": len(records), "codes": codes,
            "late_share": round(len(late) / max(1, len(records)), 4),
            "late_p99_s": round(late[int(0.99 * (len(late) - 1))], 3) if late else 0.0}


def harvest(db: Path, log, truth) -> tuple[list[dict], dict]:
    import sqlite3

    import pandas as pd

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    served = pd.read_sql_query("SELECT account, ts FROM interactions WHERE status = 200", conn)
    acts = pd.read_sql_query("SELECT account, action, log_ts, campaign FROM actions WHERE source = 'policy'", conn)
    conn.close()
    flagged_at = acts.groupby("account")["log_ts"].min()
    acted_at = acts[acts["action"].isin(["throttle", "block"])].groupby("account")["log_ts"].min()
    attack = truth[truth["is_attack"]]
    rows = []
    for name, members in attack.groupby("campaign")["account"]:
        members = set(members)
        total = int(log["account"].isin(members).sum())
        mine = served[served["account"].isin(members)]
        inf = float("inf")
        before_flag = int((mine["ts"] < mine["account"].map(flagged_at).fillna(inf)).sum())
        before_act = int((mine["ts"] < mine["account"].map(acted_at).fillna(inf)).sum())
        rows.append({"campaign": name, "share": round(before_flag / max(1, total), 4),
                     "share_before_throttle_or_block": round(before_act / max(1, total), 4),
                     "interactions": total, "served": int(len(mine)), "accounts": len(members),
                     "accounts_flagged": int(sum(a in flagged_at.index for a in members)),
                     "accounts_blocked": int(sum(a in acted_at.index for a in members))})
    benign = set(truth.loc[~truth["is_attack"], "account"])
    false = {"benign_accounts": len(benign), "benign_flagged": int(sum(a in flagged_at.index for a in benign)),
             "benign_blocked": int(sum(a in acted_at.index for a in benign))}
    return rows, false


def part_replay(args, folder: Path) -> dict:
    from stillroom.guard.detector import Guard

    tick = time.perf_counter()
    cal_log, log, truth = scenario(args)
    if args.calibration_mode == "clean":  # a benign day's calibration, loaded by the gateway
        Guard().fit(cal_log).save(folder / "calibration")
        calibration_args = ["--calibration", str(folder / "calibration")]
    else:  # every scan calibrates robustly on its own window
        calibration_args = ["--self-calibrate"]
    calibrate_s = time.perf_counter() - tick
    log = log.sort_values("ts", kind="stable").reset_index(drop=True)
    store = KeyStore(folder / "replay-keys.json")
    firsts = log.groupby("account").first()
    keys = {a: store.add(a, org=r["org"], payment=r["payment"], country=r["country"], save=False)
            for a, r in firsts.iterrows()}
    admin = store.add_admin()
    answers = {}
    for prompt, response, p_tokens, tokens in zip(log["prompt"], log["response"], log["prompt_tokens"],
                                                  log["completion_tokens"]):
        answers.setdefault(prompt, [response, int(p_tokens), int(tokens)])
    (folder / "answers.json").write_text(json.dumps(answers), encoding="utf-8")
    policy = folder / "policy.yaml"
    policy.write_text(f"on_campaign: block\non_account: flag\nscan_interval_s: {args.scan_interval}\n"
                      f"window_s: 86400\nmin_new_interactions: 200\n", encoding="utf-8")
    up_port = free_port()
    upstream = spawn([PY, str(Path(__file__).resolve()), "--serve-replay-upstream", str(folder / "answers.json"),
                      str(up_port)], folder / "replay-upstream.log")
    processes = [upstream]
    try:
        wait_http(f"http://127.0.0.1:{up_port}/v1/chat/completions", upstream)
        port = free_port()
        gateway = start_gateway(f"http://127.0.0.1:{up_port}/v1", folder / "replay-log.db", folder / "replay-keys.json",
                                port, extra=["--replay", *calibration_args, "--policy", str(policy)],
                                stderr_path=folder / "replay-gateway.log")
        processes.append(gateway)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, gateway)
        sent = asyncio.run(replay_traffic(url, log, keys, args.replay_seconds, args.replay_concurrency))
        import httpx

        admin_h = {"authorization": f"Bearer {admin}"}
        scans = httpx.get(url + "/metrics", headers=admin_h, timeout=30).text
        scan_count = re.search(r"^stillroom_gateway_scans_total (\S+)$", scans, re.M)
        scan_seconds = re.search(r"^stillroom_gateway_scan_seconds_total (\S+)$", scans, re.M)
        last = httpx.get(url + "/admin/campaigns", headers=admin_h, timeout=30).json()["last_scan"]
    finally:
        for process in reversed(processes):
            stop(process)
    rows, false = harvest(folder / "replay-log.db", log, truth)
    scans_n = float(scan_count.group(1)) if scan_count else 0.0
    return {"harvest_before_detection": rows, "false_positives": false, "replay": sent,
            "calibration_mode": args.calibration_mode,
            "interactions": len(log), "accounts": len(firsts), "calibrate_s": round(calibrate_s, 1),
            "scan_interval_log_s": args.scan_interval, "scans": int(scans_n),
            "mean_scan_s": round(float(scan_seconds.group(1)) / scans_n, 2) if scan_count and scans_n else None,
            "last_scan": last}


# ---- main ---------------------------------------------------------------------------
PARTS = {"load": part_load, "kill9": part_kill9, "replay": part_replay}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="load,kill9,replay", help="comma-separated parts: load, kill9, replay")
    parser.add_argument("--rate", type=float, default=500.0, help="offered requests/s in the load part")
    parser.add_argument("--seconds", type=int, default=60, help="seconds of load per target")
    parser.add_argument("--generator", choices=["async", "wrk"], default="async",
                        help="load generator: an open-loop async client (default), or wrk (closed loop, paced)")
    parser.add_argument("--connections", type=int, default=25, help="wrk connections")
    parser.add_argument("--litellm", default=None, help="path to the litellm executable of a venv with litellm[proxy]")
    parser.add_argument("--kill-after", type=int, default=500, help="acknowledged requests before the SIGKILL")
    parser.add_argument("--replay-seconds", type=float, default=360.0, help="wall seconds for the simulated day")
    parser.add_argument("--replay-concurrency", type=int, default=64)
    parser.add_argument("--scan-interval", type=float, default=1800.0, help="log seconds between scans in the replay")
    parser.add_argument("--calibration-mode", choices=["self", "clean"], default="self",
                        help="replay: each scan self-calibrates on its window (robust fit), or one benign day's calibration")
    parser.add_argument("--quick", action="store_true", help="10 s load phases and a smaller replay")
    parser.add_argument("--fresh", action="store_true", help="redo parts already finished for this commit")
    parser.add_argument("--serve-replay-upstream", nargs=2, metavar=("ANSWERS", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_replay_upstream:
        serve_replay_upstream(Path(args.serve_replay_upstream[0]), int(args.serve_replay_upstream[1]))
        return
    if args.quick:
        args.seconds, args.kill_after, args.replay_seconds = 10, 200, 90.0
    RUN.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        if name not in PARTS:
            raise SystemExit(f"unknown part {name!r}; parts: {', '.join(PARTS)}")
        done = RUN / f"{name}{'-quick' if args.quick else ''}.json"
        if done.is_file() and not args.fresh:
            kept = json.loads(done.read_text(encoding="utf-8"))
            if kept.get("commit") == STARTED["commit"] and not STARTED["dirty"]:
                print(f"{name}: kept from an earlier run of this commit ({done})", flush=True)
                results[name] = kept["result"]
                continue
        folder = Path(tempfile.mkdtemp(prefix=f"guard-live-{name}-"))
        print(f"{name}: running in {folder}", flush=True)
        tick = time.perf_counter()
        results[name] = PARTS[name](args, folder)
        results[name]["part_seconds"] = round(time.perf_counter() - tick, 1)
        done.write_text(json.dumps({"commit": STARTED["commit"], "result": results[name]}, indent=1), encoding="utf-8")
        print(f"{name}: {json.dumps(results[name])[:600]}", flush=True)
    # a part not run now comes from its saved result of this commit, when there is one
    for name in PARTS:
        saved = RUN / f"{name}{'-quick' if args.quick else ''}.json"
        if name not in results and saved.is_file():
            kept = json.loads(saved.read_text(encoding="utf-8"))
            if kept.get("commit") == STARTED["commit"]:
                results[name] = kept["result"]
    payload = flatten(results)
    payload["parts"] = results
    if args.quick:  # a smoke run: kept in the run folder, never as the benchmark's result
        (RUN / "quick-summary.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
        print(summary(payload))
        return
    write_result("guard_live", payload, summary(payload))


def flatten(results: dict) -> dict:
    load, kill, replay = results.get("load", {}), results.get("kill9", {}), results.get("replay", {})
    return {"p50_added_ms": load.get("p50_added_ms"), "p99_added_ms": load.get("p99_added_ms"), "peer": load.get("peer"),
            "requests": kill.get("requests"), "acknowledged": kill.get("acknowledged"),
            "logged_after_kill": kill.get("logged_after_kill"), "lost": kill.get("lost"),
            "harvest_before_detection": [{"campaign": r["campaign"], "share": r["share"]}
                                         for r in replay.get("harvest_before_detection", [])]}


def summary(p: dict) -> str:
    parts = []
    if p["p99_added_ms"] is not None:
        peer = p["peer"] or {}
        peer_text = (f"LiteLLM {peer.get('version')} p50/p99 +{peer['p50_added_ms']:.2f}/+{peer['p99_added_ms']:.2f} ms"
                     if "p99_added_ms" in peer else f"LiteLLM: {peer.get('note')}")
        rps = p["parts"]["load"]["runs"][1]["achieved_rps"]
        parts.append(f"added latency at {rps:.0f} req/s p50 +{p['p50_added_ms']:.2f} ms, p99 +{p['p99_added_ms']:.2f} ms "
                     f"(target p99 <= 5 ms); {peer_text}")
    if p["lost"] is not None:
        parts.append(f"kill -9: {p['acknowledged']} acknowledged of {p['requests']} sent, {p['logged_after_kill']} in the "
                     f"log after restart, lost {p['lost']}")
    if p["harvest_before_detection"]:
        shares = ", ".join(f"{r['campaign']} {r['share']:.1%}" for r in p["harvest_before_detection"])
        parts.append(f"harvest before detection {shares} (target <= 5%)")
    return "; ".join(parts) or "no part run"


if __name__ == "__main__":
    main()
