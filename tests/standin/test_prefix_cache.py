"""The stand-in's emulated prefix cache (vLLM's automatic prefix caching without a model): what it
counts as cached, what it evicts, what the emulated prefill charges, and how a pod reports it
(usage, headers, vLLM's prefix-cache counters). Loopback only; the pods process stops by its PID."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_until
from vllm_standin import BLOCK_TOKENS, CHARS_PER_TOKEN, PrefixCache, render_prompt

HERE = Path(__file__).resolve().parent


def text(*blocks: str) -> str:
    """Full blocks made of the given fillers: text("a", "b") is a block of a's then a block of b's."""
    return "".join(c * (BLOCK_TOKENS * CHARS_PER_TOKEN) for c in blocks)


def test_the_cached_part_is_the_leading_run_of_blocks_seen_before():
    cache = PrefixCache(capacity_tokens=100 * BLOCK_TOKENS)
    assert cache.lookup(text("a", "b", "c")) == (3 * BLOCK_TOKENS, 0)
    # The same first two blocks, then something new: two blocks cached.
    assert cache.lookup(text("a", "b", "d")) == (3 * BLOCK_TOKENS, 2 * BLOCK_TOKENS)
    # A block seen before, but after another prefix, is not a hit (hashes are chained, as vLLM's).
    assert cache.lookup(text("z", "b")) == (2 * BLOCK_TOKENS, 0)
    # The same whole prompt: all but the last token (vLLM always computes it).
    assert cache.lookup(text("a", "b", "c")) == (3 * BLOCK_TOKENS, 3 * BLOCK_TOKENS - 1)
    # A partial block at the end is never cached.
    assert cache.lookup(text("a", "b") + "tail") == (2 * BLOCK_TOKENS + 1, 2 * BLOCK_TOKENS)


def test_the_least_recently_used_blocks_are_evicted_first():
    cache = PrefixCache(capacity_tokens=4 * BLOCK_TOKENS)
    cache.lookup(text("a", "b"))
    cache.lookup(text("c", "d"))
    cache.lookup(text("a", "b"))  # a, b used again: c, d are now the oldest
    cache.lookup(text("e", "f"))  # over capacity: c and d go
    assert cache.lookup(text("a", "b"))[1] == 2 * BLOCK_TOKENS - 1
    assert cache.lookup(text("c", "d"))[1] == 0


def test_prefill_is_charged_for_the_uncached_tokens_one_request_after_another():
    off = PrefixCache()
    assert off.schedule_prefill(10_000) == 0.0  # off by default: nothing waits
    gpu = PrefixCache(tokens_per_second=10_000)
    first = gpu.schedule_prefill(1_000)  # 0.1 s alone
    second = gpu.schedule_prefill(500)  # waits for the first: 0.1 + 0.05 s
    assert first == pytest.approx(0.1, abs=0.01)
    assert second == pytest.approx(0.15, abs=0.01)


def test_chat_messages_are_rendered_with_qwens_template():
    request = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "U"}]}]}
    assert render_prompt(request) == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt({"prompt": "hello"}) == "hello"


def post(url: str, body: dict) -> tuple[dict, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read()), dict(response.headers)


def counters(base: str) -> dict[str, float]:
    text_ = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text_) for s in f.samples
            if s.name.startswith(("vllm:prefix_cache", "vllm:time_to_first_token_seconds_sum"))}


@pytest.fixture
def pods(tmp_path):
    """Two fake pods with the emulated prefill at 20,000 tokens/s, keep-alive on."""
    ports_file = tmp_path / "ports.json"
    process = subprocess.Popen(
        [sys.executable, str(HERE / "vllm_standin.py"), "pods", "--count", "2", "--served-model-name", "m", "--ports-file", str(ports_file),
         "--keep-alive", "--prefill-tokens-per-second", "20000", "--prefix-cache-tokens", "8192", "--stand-in-max-seconds", "120"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        wait_until(ports_file.exists, 20, "the pods' ports file")
        yield [f"http://127.0.0.1:{p}" for p in json.loads(ports_file.read_text())["ports"]]
    finally:
        process.kill()
        process.wait(timeout=10)


def test_a_pod_reports_cached_tokens_and_emulated_ttft(pods):
    base, other = pods
    system = "You are a helpful assistant. " * 300  # about 2,175 tokens
    chat = lambda question: {"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    started = time.monotonic()
    cold, cold_headers = post(f"{base}/v1/chat/completions", chat("first question"))
    cold_seconds = time.monotonic() - started
    warm, warm_headers = post(f"{base}/v1/chat/completions", chat("second question"))
    assert cold_headers["X-Stand-In-Pod"] == f"pod-{base.rsplit(':', 1)[1]}"
    prompt = cold["usage"]["prompt_tokens"]
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # The system prompt's full blocks are cached on the second call; its question is not.
    cached = warm["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert len(system) // CHARS_PER_TOKEN - BLOCK_TOKENS < cached < warm["usage"]["prompt_tokens"]
    cold_ttft, warm_ttft = float(cold_headers["X-Stand-In-Emulated-TTFT-Ms"]), float(warm_headers["X-Stand-In-Emulated-TTFT-Ms"])
    assert cold_ttft == pytest.approx(prompt / 20000 * 1000, rel=0.05)
    assert cold_seconds >= cold_ttft / 1000  # the completion waited for its emulated prefill
    assert warm_ttft < cold_ttft / 20
    # vLLM's counters, in tokens; the other pod has its own cache.
    values = counters(base)
    assert values["vllm:prefix_cache_queries_total"] == prompt + warm["usage"]["prompt_tokens"]
    assert values["vllm:prefix_cache_hits_total"] == cached
    assert values["vllm:time_to_first_token_seconds_sum"] == pytest.approx((cold_ttft + warm_ttft) / 1000, rel=0.01)
    elsewhere, _ = post(f"{other}/v1/chat/completions", chat("second question"))
    assert elsewhere["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_the_control_endpoint_empties_the_cache_and_turns_the_charge_off(pods):
    base = pods[0]
    body = {"model": "m", "prompt": "p" * 4000}
    post(f"{base}/v1/completions", body)
    assert post(f"{base}/v1/completions", body)[0]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    urllib.request.urlopen(urllib.request.Request(f"{base}/stand-in/prefix-cache?tokens_per_second=0", method="PUT"), timeout=5)
    answer, headers = post(f"{base}/v1/completions", body)
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert "X-Stand-In-Emulated-TTFT-Ms" not in headers
    state = json.loads(urllib.request.urlopen(f"{base}/stand-in/state", timeout=5).read())
    assert state["prefix_cache"]["capacity_tokens"] == 8192 and state["prefix_cache"]["tokens_per_second"] == 0


def test_render_gives_token_ids_that_share_a_prefix_as_the_prompts_do(pods):
    """vllm-router's cache_aware policy asks a worker for the prompt's token ids (vLLM's render endpoint)."""
    base = pods[0]
    system = {"role": "system", "content": "You are a helpful assistant. " * 50}
    first, _ = post(f"{base}/v1/chat/completions/render", {"model": "m", "messages": [system, {"role": "user", "content": "one"}]})
    second, _ = post(f"{base}/v1/chat/completions/render", {"model": "m", "messages": [system, {"role": "user", "content": "two"}]})
    other, _ = post(f"{pods[1]}/v1/chat/completions/render", {"model": "m", "messages": [system, {"role": "user", "content": "one"}]})
    rendered = render_prompt({"messages": [system, {"role": "user", "content": "one"}]})
    assert len(first["token_ids"]) == -(-len(rendered) // CHARS_PER_TOKEN)
    assert other["token_ids"] == first["token_ids"]  # the same ids on every pod
    shared = next(i for i, (a, b) in enumerate(zip(first["token_ids"], second["token_ids"])) if a != b)
    assert shared >= len(system["content"]) // CHARS_PER_TOKEN
    tokenized, _ = post(f"{base}/tokenize", {"model": "m", "prompt": "abcdefgh"})
    assert tokenized["count"] == 2 and len(tokenized["tokens"]) == 2
