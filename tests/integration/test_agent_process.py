"""The deep health agent as a process (`qwen-operator agent`), on loopback: it serves, and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import urllib.request

from conftest import REPO, free_loopback_port, wait_until


def healthz(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        return response.status == 200


def test_agents_answer_healthz_and_exit_0_promptly_on_sigterm() -> None:
    # Several at once, so SIGTERM lands while other processes keep the CPU busy. The kubelet sends SIGTERM on pod
    # deletion; an agent that missed it held the pod for the whole grace period.
    agents = []
    try:
        for _ in range(4):
            port = free_loopback_port()
            process = subprocess.Popen(
                [str(REPO / ".venv" / "bin" / "qwen-operator"), "agent", "--listen-address", "127.0.0.1", "--port", str(port),
                 "--vllm-port", str(free_loopback_port()), "--served-model-name", "qwen3", "--interval", "0.2"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            agents.append((process, port))
        for process, port in agents:
            wait_until(lambda: healthz(port), 30, f"the agent on port {port} to answer /healthz")
        for process, _ in agents:
            process.send_signal(signal.SIGTERM)
        for process, _ in agents:
            assert process.wait(timeout=5) == 0, process.communicate()[0]
    finally:
        for process, _ in agents:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)
