"""Gateway benchmark, in one run: the latency the gateway adds to streamed requests (p50/p99 against calling the
stand-in directly, at concurrency 1 and 256), its requests per second per core, and the accuracy of its rate
limiter (accepted rate against the configured rate, in memory and with Redis).

Everything runs on 127.0.0.1: the local control plane (hack/cluster.sh; QWEN_CLUSTER_DIR etc. choose which), one
stand-in engine (tests/standin, HTTP/1.1 keep-alive as vLLM's uvicorn; NOT vLLM: no model, no GPU), Debian's
redis-server, `qwen-operator gateway`, and the load generator (aiohttp on uvloop, in this process). Stops by itself.

    .venv/bin/python bench/gateway.py [--requests 400] [--out bench/results/gateway.json]

Goals (issue 13): at most 2 ms added p50 at concurrency 1; the limiter within +-5% of the configured rate.
On a 2-core machine the load generator, the gateway and the stand-in share the cores: at concurrency 256 the
figures measure that contention as much as the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "tests"))  # conftest's helpers, which gateway_support uses

import aiohttp  # noqa: E402
import requests  # noqa: E402

from gateway_support import (LOOPBACK, chat, key_secret, new_key, qwen_inference, ready_status, start_gateway,  # noqa: E402
                             start_redis, start_standins, wait_for)

CLUSTER_SH = REPO / "hack" / "cluster.sh"
KUBECTL = REPO / ".venv" / "bin" / "kubectl"
TOKENS = 16  # content tokens per streamed answer (plus 2 reasoning events, the finish, the usage and [DONE])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def streamed(session: aiohttp.ClientSession, url: str, headers: dict, body: bytes) -> tuple[float, float]:
    """(time to the first content event, time to the end) of one streamed chat completion."""
    sent = time.perf_counter()
    first = None
    async with session.post(url, data=body, headers=headers) as answer:
        assert answer.status == 200, (answer.status, await answer.text())
        async for chunk in answer.content.iter_any():
            if first is None and b'"content": "stand' in chunk:
                first = time.perf_counter() - sent
    end = time.perf_counter() - sent
    return (first if first is not None else end), end


async def latency(direct: str, gateway: str, key: str, model: str, concurrency: int, total: int) -> dict:
    body = json.dumps(chat(model, stream=True, max_tokens=TOKENS)).encode()
    results: dict[str, list[tuple[float, float]]] = {"direct": [], "gateway": []}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        targets = {"direct": (f"{direct}/v1/chat/completions", {"Content-Type": "application/json"}),
                   "gateway": (f"{gateway}/v1/chat/completions", {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})}
        for name, (url, headers) in targets.items():  # warm up connections and code paths
            await asyncio.gather(*(streamed(session, url, headers, body) for _ in range(min(concurrency, 64))))
        # Alternate rounds of direct and gateway, so that drift (other work on the machine) hits both alike.
        rounds = 8
        per_round = max(concurrency, total // rounds)
        for _ in range(rounds):
            for name, (url, headers) in targets.items():
                queue = list(range(per_round))

                async def worker() -> None:
                    while queue:
                        queue.pop()
                        results[name].append(await streamed(session, url, headers, body))

                await asyncio.gather(*(worker() for _ in range(concurrency)))
    figures = {}
    for name, samples in results.items():
        firsts, ends = [s[0] * 1000 for s in samples], [s[1] * 1000 for s in samples]
        figures[name] = {"requests": len(samples), "ttft_p50_ms": percentile(firsts, 50), "ttft_p99_ms": percentile(firsts, 99),
                         "total_p50_ms": percentile(ends, 50), "total_p99_ms": percentile(ends, 99)}
    figures["added_ms"] = {k: round(figures["gateway"][k] - figures["direct"][k], 3)
                           for k in ("ttft_p50_ms", "ttft_p99_ms", "total_p50_ms", "total_p99_ms")}
    return figures


async def throughput(gateway: str, key: str, model: str, pid: int, seconds: float, concurrency: int) -> dict:
    body = json.dumps(chat(model)).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for _ in range(20):
            async with session.post(f"{gateway}/v1/chat/completions", data=body, headers=headers) as answer:
                await answer.read()
        cpu_before, started = cpu_seconds(pid), time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.post(f"{gateway}/v1/chat/completions", data=body, headers=headers) as answer:
                    await answer.read()
                    assert answer.status == 200, answer.status
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
    return {"requests": done, "seconds": round(elapsed, 2), "rps": round(done / elapsed, 1), "gateway_cpu_seconds": round(cpu, 2),
            "gateway_cores_used": round(cpu / elapsed, 2), "rps_per_core": round(done / cpu, 1), "concurrency": concurrency}


async def limiter(gateway: str, key: str, model: str, rate: float, burst: int, seconds: float, concurrency: int) -> dict:
    body = json.dumps(chat(model)).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    codes: dict[int, int] = {}
    accepted_at: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                async with session.post(f"{gateway}/v1/chat/completions", data=body, headers=headers) as answer:
                    await answer.read()
                    codes[answer.status] = codes.get(answer.status, 0) + 1
                    if answer.status == 200:
                        accepted_at.append(time.perf_counter())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    # The accepted rate in the steady state: from 1 s after the first acceptance (the burst is spent, the clients'
    # connections are open) to the end of the offered load.
    window_start = accepted_at[0] + 1.0
    steady = [t for t in accepted_at if window_start <= t <= deadline]
    measured = len(steady) / (deadline - window_start)
    return {"configured_rps": rate, "burst": burst, "seconds": round(elapsed, 2), "offered_rps": round(sum(codes.values()) / elapsed, 1),
            "accepted": codes.get(200, 0), "refused_429": codes.get(429, 0), "other": {str(k): v for k, v in codes.items() if k not in (200, 429)},
            "accepted_rps_whole_run_less_burst": round((codes.get(200, 0) - burst) / elapsed, 2),
            "accepted_rps": round(measured, 2), "error_percent": round((measured - rate) / rate * 100, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="streamed requests per target at concurrency 1")
    parser.add_argument("--requests-256", type=int, default=4096, help="streamed requests per target at concurrency 256")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the throughput and limiter runs")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gateway.json"))
    args = parser.parse_args()

    subprocess.run([str(CLUSTER_SH), "up"], check=True, timeout=3600, env={**os.environ, "QWEN_REAL_NODE": "0"}, stdout=subprocess.DEVNULL)
    kubeconfig = subprocess.run([str(CLUSTER_SH), "kubeconfig"], check=True, capture_output=True, text=True).stdout.strip()
    kubectl = lambda *a, **kw: subprocess.run([str(KUBECTL), "--kubeconfig", kubeconfig, *a], check=True, capture_output=True, text=True, timeout=60, **kw)  # noqa: E731
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    namespace = f"bench-gateway-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    processes = []
    try:
        model = f"bench-{uuid.uuid4().hex[:6]}"
        standin, ports = start_standins(model, 1, workdir, max_seconds=1200, keep_alive=True)
        processes.append(standin)
        apply = lambda obj: kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(obj))  # noqa: E731
        apply(qwen_inference("bench", model))
        kubectl("patch", "qweninference", "bench", "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(ready_status(model, ports[0])))
        key = new_key()
        apply(key_secret("bench", key, rate=1e6, burst=1_000_000))
        limited = {"rate": 50.0, "burst": 5}
        limited_key = new_key()
        apply(key_secret("limited", limited_key, models="*", rate=limited["rate"], burst=limited["burst"]))
        redis, redis_port = start_redis(workdir)
        processes.append(redis)
        gateway = start_gateway(kubeconfig, namespace, workdir)
        processes.append(gateway.process)
        shared = start_gateway(kubeconfig, namespace, workdir, "--redis-url", f"redis://{LOOPBACK}:{redis_port}/0", "--redis-prefix", namespace)
        processes.append(shared.process)
        for g, k in ((gateway, key), (gateway, limited_key), (shared, limited_key)):
            wait_for(lambda: requests.get(g.url + "/v1/models", headers={"Authorization": f"Bearer {k}"}, timeout=2).status_code == 200, 30, "keys")
        direct = f"http://{LOOPBACK}:{ports[0]}"
        results: dict = {"machine": {"cpus": os.cpu_count()}, "stand_in": "tests/standin (not vLLM), HTTP/1.1 keep-alive, "
                         f"{TOKENS} content tokens per streamed answer, no pacing"}
        print("latency, streamed, concurrency 1 ...", flush=True)
        results["latency_c1"] = asyncio.run(latency(direct, gateway.url, key, model, 1, args.requests))
        print(json.dumps(results["latency_c1"]), flush=True)
        print("latency, streamed, concurrency 256 ...", flush=True)
        results["latency_c256"] = asyncio.run(latency(direct, gateway.url, key, model, 256, args.requests_256))
        print(json.dumps(results["latency_c256"]), flush=True)
        print("throughput, non-streamed ...", flush=True)
        results["throughput"] = asyncio.run(throughput(gateway.url, key, model, gateway.process.process.pid, args.seconds, 64))
        print(json.dumps(results["throughput"]), flush=True)
        print("limiter, in memory ...", flush=True)
        results["limiter_memory"] = asyncio.run(limiter(gateway.url, limited_key, model, limited["rate"], limited["burst"], args.seconds, 32))
        print(json.dumps(results["limiter_memory"]), flush=True)
        print("limiter, Redis ...", flush=True)
        results["limiter_redis"] = asyncio.run(limiter(shared.url, limited_key, model, limited["rate"], limited["burst"], args.seconds, 32))
        print(json.dumps(results["limiter_redis"]), flush=True)
        results["goals"] = {
            "added_p50_ms_at_c1<=2": results["latency_c1"]["added_ms"]["total_p50_ms"] <= 2.0,
            "limiter_memory_within_5%": abs(results["limiter_memory"]["error_percent"]) <= 5,
            "limiter_redis_within_5%": abs(results["limiter_redis"]["error_percent"]) <= 5,
        }
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps(results["goals"]))
        print(f"wrote {args.out}")
    finally:
        for process in reversed(processes):
            process.stop()
        subprocess.run([str(KUBECTL), "--kubeconfig", kubeconfig, "delete", "namespace", namespace, "--wait=false"], capture_output=True, timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
