"""The gateway's chat page at / in headless Chromium (Debian's chromium, driven by Playwright with that system browser;
no browser download): a streamed answer with its thinking folded apart, the badge turning to down with send disabled
when the engine stops, and the page recovering when it starts again. Loopback only: the gateway, a stand-in engine
(not vLLM) and the local API server; the test writes the QwenInference's status as the operator would."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import requests

from conftest import install_crds
from gateway_support import LOOPBACK, key_secret, new_key, qwen_inference, ready_status, start_gateway, start_standins

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
# The committed screenshots (docs/) are written again only with QWEN_UPDATE_SCREENSHOTS=1; otherwise into the test's tmp.
DOCS_SCREENSHOT = REPO / "docs" / "gateway-chat.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def setup(cluster, k8s, tmp_path_factory):
    from kubernetes import client

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: make tools installs it (hack/install-node-packages.sh)")
    install_crds(cluster)
    namespace = f"gateway-page-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(k8s)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels={"qwen-tests": "true"})))
    workdir = tmp_path_factory.mktemp("page")
    model = f"page-{uuid.uuid4().hex[:6]}"
    processes = []
    try:
        standin, ports = start_standins(model, 1, workdir)
        processes.append(standin)
        apply = lambda obj: cluster.apply(json.dumps(obj), namespace)  # noqa: E731
        apply(qwen_inference("chat", model))
        status = lambda port, ready, reason: cluster.kubectl("patch", "qweninference", "chat", "-n", namespace, "--subresource=status",  # noqa: E731
                                                             "--type=merge", "-p", json.dumps(ready_status(model, port, ready, reason)))
        status(ports[0], 1, "Ready")
        key = new_key()
        apply(key_secret("page", key, models=model))
        gateway = start_gateway(cluster.kubeconfig, namespace, workdir)
        processes.append(gateway.process)
        yield {"gateway": gateway, "key": key, "model": model, "port": ports[0], "standin": standin, "status": status,
               "workdir": workdir, "processes": processes}
    finally:
        for process in processes:
            process.stop()
        core.delete_namespace(namespace)


def test_chat_page_streams_folds_thinking_and_follows_the_engines_health(setup, tmp_path):
    import os

    from playwright.sync_api import expect, sync_playwright

    screenshot = DOCS_SCREENSHOT if os.environ.get("QWEN_UPDATE_SCREENSHOTS") == "1" else tmp_path / "gateway-chat.png"

    gateway, key, model = setup["gateway"], setup["key"], setup["model"]
    requests.put(f"http://{LOOPBACK}:{setup['port']}/stand-in/stream?token_seconds=0.2", timeout=5)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            external = []
            page.on("request", lambda r: external.append(r.url) if not r.url.startswith(gateway.url) else None)
            page.goto(gateway.url + "/")
            page.fill("#key", key)
            page.click("text=Use key")
            expect(page.locator("#model")).to_have_value(model, timeout=10000)
            expect(page.locator("#badge")).to_have_attribute("data-state", "ready", timeout=10000)
            # The key is in page memory only.
            assert page.evaluate("localStorage.length + sessionStorage.length") == 0 and key not in page.url
            assert page.input_value("#key") == ""
            # Count the answer's updates as they arrive: streamed, not all at once.
            page.evaluate("""() => { window.updates = [];
                new MutationObserver(() => { const a = document.querySelector('.turn.assistant:last-child .answer');
                  if (a) window.updates.push(a.textContent); }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true}); }""")
            page.fill("#question", "What is a stand-in?")
            page.click("#send")
            answer = page.locator(".turn.assistant .answer").last
            expect(answer).to_have_text("stand-in", timeout=15000)
            expect(page.locator("#send")).to_be_enabled(timeout=10000)  # the stream has ended ([DONE])
            updates = [u for u in page.evaluate("window.updates") if u]
            assert "stand" in updates and updates[-1] == "stand-in", updates
            thinking = page.locator(".turn.assistant details.thinking").last
            expect(thinking).to_be_visible()
            assert thinking.evaluate("d => d.open") is False  # folded
            assert thinking.evaluate("d => d.textContent").endswith("Thinking it over.")
            thinking.locator("summary").click()
            page.screenshot(path=str(screenshot))
            # The engine stops (the operator would report Ready=False CrashLoop): the badge turns to down, send is off.
            setup["standin"].stop()
            setup["status"](setup["port"], 0, "CrashLoop")
            expect(page.locator("#badge")).to_have_attribute("data-state", "down", timeout=10000)
            expect(page.locator("#send")).to_be_disabled()
            expect(page.locator("#why")).to_contain_text("the model is down (CrashLoop)")
            page.screenshot(path=str(screenshot.with_name("gateway-chat-down.png")))
            # It starts again: the page recovers and answers.
            standin, ports = start_standins(model, 1, setup["workdir"])
            setup["processes"].append(standin)
            setup["status"](ports[0], 1, "Ready")
            expect(page.locator("#badge")).to_have_attribute("data-state", "ready", timeout=10000)
            expect(page.locator("#why")).to_have_text("")
            page.fill("#question", "Again?")
            expect(page.locator("#send")).to_be_enabled()
            page.click("#send")
            expect(page.locator(".turn.assistant .answer").last).to_have_text("stand-in", timeout=15000)
            assert not page.locator(".turn.error").count(), page.locator(".turn.error").all_inner_texts()
            assert external == [], external  # no external assets
        finally:
            browser.close()
