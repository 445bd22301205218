"""Routing benchmark (issue 12): vllm-router's policies on a shared-prefix chat mix, on loopback.

In one run it starts N vLLM stand-ins, one process each (tests/standin/vllm_standin.py `pods`: not vLLM, no model;
each keeps an emulated prefix cache and charges an emulated prefill for the uncached part of a
prompt) and, for each policy, vllm-router with their static URLs (`--worker-urls`, `--policy`). The
router comes from PyPI at the pinned version (hack/versions.env VLLM_ROUTER_VERSION), installed with
`pip --require-hashes` from images/router/requirements.lock into a venv of its own, cached under
~/.cache/qwen-operator/router-venv/<hash of the lock's requirements>.

Policies: random (what a Service does), round_robin, power_of_two, cache_aware (the router's
defaults: --cache-threshold 0.3, --balance-abs-threshold 64, --balance-rel-threshold 1.5).

Workload: 16 system prompts of 2,048-4,096 tokens, 32 users each; a request is one user's next
turn (system prompt, the user's last two turns, a new question). The same request sequence goes to
every policy, at 32 requests in flight.

Per policy it reports:
- the prefix-hit ratio, a pure routing figure: the share of requests sent to a replica that had
  served the same system prompt among the last 4 distinct system prompts it served (4 x 4,096
  tokens is the emulated cache of a stand-in, 16,384 tokens). The replica is read from the
  stand-in's X-Stand-In-Pod header;
- the stand-ins' own token hit rate (vllm:prefix_cache_hits_total / queries_total), and the render calls
  per request they answered (cache_aware asks the workers for token ids: POST /v1/chat/completions/render);
- the EMULATED time to first token (queue on the replica's one emulated GPU + prefill of the
  uncached tokens at 20,000 tokens/s): mean, p50, p99;
- the router's added latency: the same requests sent to a stand-in directly and through the
  router, with the emulated prefill off, at 1 request in flight (interleaved one by one) and at
  256 (alternating phases); p50 and p99 of each and their differences.

Everything listens on 127.0.0.1. Every process it starts stops by itself (the stand-ins after
--max-seconds, the router under coreutils `timeout`), and is stopped by its PID at the end.
Results: a table on stdout, bench/results/routing-<date>.json and .md.

    .venv/bin/python bench/routing.py [--pods 8] [--requests 640] [--latency-requests 300] [--sweep-requests 60] [--max-seconds 600]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ROUTER_LOCK = REPO / "images" / "router" / "requirements.lock"
STANDIN = REPO / "tests" / "standin" / "vllm_standin.py"
MODEL = "qwen3-0.6b-fp8"
POLICIES = ("random", "round_robin", "power_of_two", "cache_aware")
# Emulated prefill rate of Qwen3-0.6B on one L4. An assumption, not a measurement: a prompt token
# costs about 2 x 0.6e9 = 1.2 GFLOP; the L4 gives 242 dense FP8 TFLOPS (NVIDIA's datasheet: 485 with
# sparsity); a 0.6B model keeps a small share of that busy, assumed 10%: 24 TFLOPS, 20,000 tokens/s.
PREFILL_TOKENS_PER_SECOND = 20_000
# Emulated prefix cache per replica: the KV cache an engine has left for idle prefixes next to its
# running batch (an assumption; an idle 0.6B engine on an L4 would hold ~170k tokens).
CACHE_TOKENS = 16_384
RECENT_PREFIXES = 4  # "recently served": CACHE_TOKENS holds 4 system prompts of the longest kind
SYSTEM_PROMPTS, USERS_PER_PROMPT, PROMPT_TOKENS = 16, 32, (2048, 4096)
SWEEP_TOKENS = (64, 512, 2048, 4096)  # system prompt sizes of the added-latency sweep at concurrency 1
CHARS_PER_TOKEN = 4  # the stand-in counts a token as 4 characters


# ---- processes --------------------------------------------------------------------------------------


def pinned_router_version() -> str:
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if line.startswith("VLLM_ROUTER_VERSION="):
            return line.split("=", 1)[1].strip().lstrip("v")
    raise SystemExit("hack/versions.env has no VLLM_ROUTER_VERSION")


def router_executable() -> tuple[Path, str]:
    """vllm-router from its own venv, made once per lock (its requirement lines, not its comments)."""
    requirements = "\n".join(line for line in ROUTER_LOCK.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#"))
    venv = Path.home() / ".cache" / "qwen-operator" / "router-venv" / hashlib.sha256(requirements.encode()).hexdigest()[:12]
    stamp = venv / ".installed"
    if not stamp.exists():
        print(f"installing vllm-router into {venv} (pip --require-hashes -r {ROUTER_LOCK.relative_to(REPO)})", flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "--require-hashes", "-r", str(ROUTER_LOCK)],
                       check=True, timeout=900)
        stamp.touch()
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('vllm-router'))"],
                             check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    if version != pinned_router_version():
        raise SystemExit(f"vllm-router {version} in {venv}, but hack/versions.env pins {pinned_router_version()}")
    return venv / "bin" / "vllm-router", version


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen | None) -> None:
    """Stops a process this benchmark started (its own session: the PID is the group's id)."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def start_standins(count: int, workdir: Path, max_seconds: float, started: list[subprocess.Popen]) -> list[str]:
    """One process per stand-in, as engines are (each renders and answers on its own); appended to `started`."""
    for i in range(count):
        started.append(subprocess.Popen(
            [sys.executable, str(STANDIN), "pods", "--count", "1", "--served-model-name", MODEL, "--ports-file", str(workdir / f"ports-{i}.json"),
             "--keep-alive", "--prefill-tokens-per-second", str(PREFILL_TOKENS_PER_SECOND), "--prefix-cache-tokens", str(CACHE_TOKENS),
             "--stand-in-max-seconds", str(int(max_seconds))],
            stdout=open(workdir / f"standin-{i}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        ))
    urls, deadline = [], time.monotonic() + 30
    for i, process in enumerate(started):
        ports_file = workdir / f"ports-{i}.json"
        while not ports_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"stand-in {i} did not start: {(workdir / f'standin-{i}.log').read_text()[-2000:]}")
            time.sleep(0.1)
        urls += [f"http://127.0.0.1:{p}" for p in json.loads(ports_file.read_text())["ports"]]
    return urls


def start_router(executable: Path, policy: str, workers: list[str], workdir: Path, max_seconds: float) -> tuple[subprocess.Popen, str]:
    port, metrics_port = free_port(), free_port()
    process = subprocess.Popen(
        ["timeout", str(int(max_seconds)), str(executable), "--host", "127.0.0.1", "--port", str(port),
         "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port), "--log-level", "warning",
         "--policy", policy, "--worker-urls", *workers],
        stdout=open(workdir / f"router-{policy}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            workers_seen = json.loads(urllib.request.urlopen(f"{url}/workers", timeout=2).read())["workers"]
            if sum(w["is_healthy"] for w in workers_seen) == len(workers):
                return process, url
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"vllm-router ({policy}) did not become ready: {(workdir / f'router-{policy}.log').read_text()[-2000:]}")
        time.sleep(0.2)


def put(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url, method="PUT"), timeout=10).read()


def pod_counters(pods: list[str]) -> tuple[float, float, float]:
    """(queried tokens, hit tokens, render calls) summed over the stand-ins, from their counters."""
    queries = hits = renders = 0.0
    for pod in pods:
        for line in urllib.request.urlopen(f"{pod}/metrics", timeout=10).read().decode().splitlines():
            if line.startswith("vllm:prefix_cache_queries_total{"):
                queries += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_hits_total{"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith('http_requests_total{handler="/v1/chat/completions/render"'):
                renders += float(line.rsplit(" ", 1)[1])
    return queries, hits, renders


# ---- the workload -----------------------------------------------------------------------------------


def text_maker(rng: random.Random):
    vocabulary = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(3000)]

    def words(tokens: int) -> str:
        out, size = [], 0
        while size < tokens * CHARS_PER_TOKEN:
            out.append(rng.choice(vocabulary))
            size += len(out[-1]) + 1
        return " ".join(out)
    return words


def workload(requests: int, seed: int) -> list[tuple[int, bytes]]:
    """(system prompt id, request body) for each request: the same sequence for every policy."""
    rng = random.Random(seed)
    words = text_maker(rng)

    systems = [f"You are assistant number {i} of this benchmark. " + words(rng.randint(*PROMPT_TOKENS)) for i in range(SYSTEM_PROMPTS)]
    histories: dict[tuple[int, int], list[dict]] = collections.defaultdict(list)
    sequence = []
    for _ in range(requests):
        prompt, user = rng.randrange(SYSTEM_PROMPTS), rng.randrange(USERS_PER_PROMPT)
        history = histories[(prompt, user)]
        question = {"role": "user", "content": words(rng.randint(20, 120))}
        messages = [{"role": "system", "content": systems[prompt]}, *history[-4:], question]
        history[:] = [*history[-2:], question, {"role": "assistant", "content": "stand-in"}]
        sequence.append((prompt, json.dumps({"model": MODEL, "messages": messages, "max_tokens": 1}).encode()))
    return sequence


# ---- the client -------------------------------------------------------------------------------------


async def send(session: aiohttp.ClientSession, url: str, body: bytes, path: str = "/v1/chat/completions") -> tuple[float, str, float | None]:
    """(seconds, the pod that answered, its emulated TTFT in seconds)."""
    started = time.perf_counter()
    async with session.post(f"{url}{path}", data=body, headers={"Content-Type": "application/json"}) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
        elapsed = time.perf_counter() - started
        ttft = response.headers.get("X-Stand-In-Emulated-TTFT-Ms")
        return elapsed, response.headers.get("X-Stand-In-Pod", "?"), float(ttft) / 1000 if ttft else None


async def run_at(session, targets: list[str], bodies: list[bytes], concurrency: int) -> list[tuple[float, str, float | None]]:
    """Every body once, `concurrency` in flight; body i goes to targets[i % len(targets)]."""
    results: list = [None] * len(bodies)
    next_index = iter(range(len(bodies)))

    async def worker() -> None:
        for i in next_index:
            results[i] = await send(session, targets[i % len(targets)], bodies[i])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def render_everywhere(session, pods: list[str], body: bytes) -> float:
    """Seconds until every stand-in has rendered this prompt, all asked at once: what cache_aware waits for."""
    started = time.perf_counter()
    await asyncio.gather(*(send(session, pod, body, "/v1/chat/completions/render") for pod in pods))
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summary(seconds: list[float]) -> dict[str, float]:
    return {"n": len(seconds), "mean_ms": 1000 * sum(seconds) / len(seconds), "p50_ms": 1000 * percentile(seconds, 50), "p99_ms": 1000 * percentile(seconds, 99)}


async def routing_pass(session, router: str, sequence: list[tuple[int, bytes]], concurrency: int) -> dict:
    results = await run_at(session, [router], [body for _, body in sequence], concurrency)
    recent: dict[str, collections.OrderedDict] = collections.defaultdict(collections.OrderedDict)
    hits, per_pod = 0, collections.Counter()
    for (prompt, _), (_, pod, _) in zip(sequence, results):
        seen = recent[pod]
        hits += prompt in seen
        seen[prompt] = None
        seen.move_to_end(prompt)
        while len(seen) > RECENT_PREFIXES:
            seen.popitem(last=False)
        per_pod[pod] += 1
    ttfts = [ttft for _, _, ttft in results]
    return {"prefix_hit_ratio": hits / len(sequence), "ttft_emulated": summary(ttfts), "requests_per_pod": dict(sorted(per_pod.items()))}


async def latency_pass(session, router: str, pods: list[str], bodies: list[bytes], count_c1: int, count_c256: int) -> dict:
    """The same bodies to a stand-in directly (client-side round robin) and through the router."""
    direct, routed, render = {1: [], 256: []}, {1: [], 256: []}, []
    for i in range(count_c1):  # one by one, interleaved
        body = bodies[i % len(bodies)]
        direct[1].append((await send(session, pods[i % len(pods)], body))[0])
        routed[1].append((await send(session, router, body))[0])
        # What cache_aware asks of the workers before it routes: vLLM's render endpoint on every one, called directly.
        render.append(await render_everywhere(session, pods, body))
    for _ in range(2):  # phases at 256 in flight: direct, router, direct, router
        batch = [bodies[i % len(bodies)] for i in range(count_c256)]
        direct[256] += [r[0] for r in await run_at(session, pods, batch, 256)]
        routed[256] += [r[0] for r in await run_at(session, [router], batch, 256)]
    figures = {}
    for c in (1, 256):
        d, r = summary(direct[c]), summary(routed[c])
        figures[f"c{c}"] = {"direct": d, "router": r, "added_p50_ms": r["p50_ms"] - d["p50_ms"], "added_p99_ms": r["p99_ms"] - d["p99_ms"]}
    figures["c1"]["render_everywhere"] = summary(render)
    return figures


def sweep_bodies(tokens: int, count: int, seed: int) -> list[bytes]:
    """`count` requests over 4 system prompts of `tokens` tokens, each with a short question."""
    rng = random.Random(seed + tokens)
    words = text_maker(rng)
    systems = [words(tokens) for _ in range(4)]
    return [json.dumps({"model": MODEL, "max_tokens": 1, "messages": [{"role": "system", "content": systems[i % 4]},
                                                                      {"role": "user", "content": words(30)}]}).encode() for i in range(count)]


async def length_sweep(session, router: str, pods: list[str], count: int, seed: int) -> dict:
    """Concurrency 1, interleaved: direct, through the router, and the render on every stand-in, per prompt size."""
    out = {}
    for tokens in SWEEP_TOKENS:
        direct, routed, render = [], [], []
        for i, body in enumerate(sweep_bodies(tokens, count, seed)):
            pod = pods[i % len(pods)]
            direct.append((await send(session, pod, body))[0])
            routed.append((await send(session, router, body))[0])
            render.append(await render_everywhere(session, pods, body))
        d, r, x = summary(direct), summary(routed), summary(render)
        out[str(tokens)] = {"direct": d, "router": r, "render_everywhere": x, "added_p50_ms": r["p50_ms"] - d["p50_ms"]}
    return out


async def bench(args, executable: Path, pods: list[str], workdir: Path, deadline: float) -> dict:
    sequence = workload(args.requests, args.seed)
    bodies = [body for _, body in sequence]
    results = {}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        for policy in args.policies:
            router_process, router = start_router(executable, policy, pods, workdir, deadline - time.monotonic())
            try:
                for pod in pods:  # cold, empty caches for every policy; the emulated prefill on
                    put(f"{pod}/stand-in/prefix-cache?tokens_per_second={PREFILL_TOKENS_PER_SECOND}&capacity_tokens={CACHE_TOKENS}")
                queried, hit, renders = pod_counters(pods)
                started = time.monotonic()
                routing = await routing_pass(session, router, sequence, args.concurrency)
                routing["seconds"] = time.monotonic() - started
                queried2, hit2, renders2 = pod_counters(pods)
                routing["token_hit_rate"] = (hit2 - hit) / (queried2 - queried)
                routing["render_calls_per_request"] = (renders2 - renders) / len(sequence)
                for pod in pods:  # the router's own cost: no emulated prefill
                    put(f"{pod}/stand-in/prefix-cache?tokens_per_second=0")
                await run_at(session, pods + [router], bodies[:64], 8)  # warm connections on both paths
                routing["latency"] = await latency_pass(session, router, pods, bodies, args.latency_requests, args.latency_requests_c256)
                routing["length_sweep"] = await length_sweep(session, router, pods, args.sweep_requests, args.seed)
                results[policy] = routing
                print(f"  {policy}: hit ratio {routing['prefix_hit_ratio']:.2f}, emulated TTFT p50 {routing['ttft_emulated']['p50_ms']:.0f} ms, "
                      f"router adds {routing['latency']['c1']['added_p50_ms']:.2f} ms p50 at c=1", flush=True)
            finally:
                stop(router_process)
    return results


# ---- the report -------------------------------------------------------------------------------------


def report(run: dict) -> str:
    results, random_ratio = run["policies"], run["policies"].get("random", {}).get("prefix_hit_ratio")
    lines = [
        f"Routing benchmark, {run['date']}: vllm-router {run['router_version']}, {run['pods']} vLLM stand-ins (not vLLM), "
        f"{run['requests']} requests at {run['concurrency']} in flight per policy",
        f"(`{run['command']}`, {run['seconds']:.0f} s; load average {run['load_before']} before, {run['load_after']} after, {os.cpu_count()} cores)",
        "",
        "Routing: prefix-hit ratio (pure routing: the replica had served this system prompt among its last "
        f"{RECENT_PREFIXES} distinct ones), the stand-ins' token hit rate, EMULATED TTFT ({PREFILL_TOKENS_PER_SECOND:,} tokens/s prefill, "
        f"{CACHE_TOKENS:,}-token cache per replica)",
        "",
        "| policy | prefix-hit ratio | vs random | token hit rate (emulated cache) | emulated TTFT mean / p50 / p99 | requests per replica (min-max) | render calls per request |",
        "|---|---|---|---|---|---|---|",
    ]
    for policy, r in results.items():
        t = r["ttft_emulated"]
        ratio = f"{r['prefix_hit_ratio'] / random_ratio:.1f}x" if random_ratio else "-"
        counts = r["requests_per_pod"].values()
        lines.append(f"| {policy} | {r['prefix_hit_ratio']:.3f} | {ratio} | {r['token_hit_rate']:.3f} | "
                     f"{t['mean_ms']:.0f} / {t['p50_ms']:.0f} / {t['p99_ms']:.0f} ms | {min(counts)}-{max(counts)} | {r['render_calls_per_request']:.1f} |")
    lines += [
        "",
        "Router's added latency (emulated prefill off): the same requests to a stand-in directly and through vllm-router, "
        "p50 / p99 in ms",
        "",
        "| policy | c=1 direct | c=1 router | c=1 added | c=256 direct | c=256 router | c=256 added | c=1 render on every stand-in, direct |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for policy, r in results.items():
        c1, c256 = r["latency"]["c1"], r["latency"]["c256"]
        cell = lambda s: f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f}"
        lines.append(f"| {policy} | {cell(c1['direct'])} | {cell(c1['router'])} | {c1['added_p50_ms']:+.2f} / {c1['added_p99_ms']:+.2f} | "
                     f"{cell(c256['direct'])} | {cell(c256['router'])} | {c256['added_p50_ms']:+.2f} / {c256['added_p99_ms']:+.2f} | "
                     f"{cell(c1['render_everywhere'])} |")
    lines += ["", "cache_aware asks the workers for the prompt's token ids (POST /v1/chat/completions/render) before it routes "
              "(render calls per request, above, counted by the stand-ins). The last column is that work done directly: the same "
              "render sent to every stand-in at once, until all have answered (a floor for what cache_aware waits for; its cost is "
              "the stand-ins' and this machine's, not vLLM's)."]
    lines += [
        "",
        "Router's added latency at concurrency 1 by system prompt size (p50, ms; emulated prefill off; "
        "in brackets: the render sent to every stand-in at once, directly)",
        "",
        "| policy | " + " | ".join(f"{t:,} tokens" for t in SWEEP_TOKENS) + " |",
        "|---|" + "---|" * len(SWEEP_TOKENS),
    ]
    for policy, r in results.items():
        cells = [f"{r['length_sweep'][str(t)]['added_p50_ms']:+.2f} ({r['length_sweep'][str(t)]['render_everywhere']['p50_ms']:.2f})" for t in SWEEP_TOKENS]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    lines += ["", "Goals:"]
    for goal in run["goals"]:
        lines.append(f"- {goal['goal']}: {goal['figure']} -> {'met' if goal['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"


def goals(results: dict) -> list[dict]:
    out = []
    if "random" in results and "cache_aware" in results:
        ratio = results["cache_aware"]["prefix_hit_ratio"] / max(results["random"]["prefix_hit_ratio"], 1e-9)
        out.append({"goal": "cache_aware >= 3x random's prefix-hit ratio", "figure": f"{ratio:.2f}x", "met": ratio >= 3})
    for policy, r in results.items():
        added = r["latency"]["c1"]["added_p50_ms"]
        out.append({"goal": f"router ({policy}) adds <= 1 ms p50 at concurrency 1", "figure": f"{added:.2f} ms", "met": added <= 1.0})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=8, help="stand-in replicas (default 8)")
    parser.add_argument("--requests", type=int, default=640, help="requests per policy in the routing pass (default 640)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight in the routing pass (default 32)")
    parser.add_argument("--latency-requests", type=int, default=300, help="requests per path at concurrency 1 (default 300)")
    parser.add_argument("--latency-requests-c256", type=int, default=512, help="requests per path and phase at concurrency 256 (default 512)")
    parser.add_argument("--sweep-requests", type=int, default=60, help="requests per path and prompt size in the length sweep (default 60)")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated (default: all four)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--max-seconds", type=float, default=600, help="the whole run's time bound (default 600)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = parser.parse_args()
    args.policies = [p for p in args.policies.split(",") if p]

    started, deadline = time.monotonic(), time.monotonic() + args.max_seconds
    executable, version = router_executable()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="qwen-bench-routing-"))
    standins: list[subprocess.Popen] = []

    def out_of_time(*_):
        raise SystemExit(f"bench/routing.py: the {args.max_seconds:g} s bound was reached; logs in {workdir}")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(args.max_seconds))
    try:
        pods = start_standins(args.pods, workdir, args.max_seconds + 30, standins)
        print(f"{len(pods)} stand-ins on 127.0.0.1; vllm-router {version}; policies {', '.join(args.policies)}", flush=True)
        results = asyncio.run(bench(args, executable, pods, workdir, deadline))
    finally:
        signal.alarm(0)
        for process in standins:
            stop(process)
    run = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "bench/routing.py " + " ".join(sys.argv[1:]) if sys.argv[1:] else "make bench-routing",
        "router_version": version, "pods": args.pods, "requests": args.requests, "concurrency": args.concurrency,
        "workload": {"system_prompts": SYSTEM_PROMPTS, "users_per_prompt": USERS_PER_PROMPT, "prompt_tokens": PROMPT_TOKENS, "seed": args.seed},
        "emulation": {"prefill_tokens_per_second": PREFILL_TOKENS_PER_SECOND, "cache_tokens_per_replica": CACHE_TOKENS,
                      "recent_prefixes": RECENT_PREFIXES, "chars_per_token": CHARS_PER_TOKEN},
        "load_before": load_before, "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "seconds": time.monotonic() - started, "policies": results,
    }
    run["goals"] = goals(results)
    text = report(run)
    print("\n" + text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = RESULTS / f"routing-{datetime.date.today().isoformat()}"
        stem.with_suffix(".json").write_text(json.dumps(run, indent=1) + "\n")
        stem.with_suffix(".md").write_text(text)
        print(f"written: {stem.relative_to(REPO)}.json and .md")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
