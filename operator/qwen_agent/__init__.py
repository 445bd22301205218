"""qwen-agent: the deep health agent beside vLLM in each engine pod (`qwen-operator agent`).

vLLM's /health stays 200 while its engine is stuck, so a liveness probe on /health never restarts a hung
engine. The agent looks deeper every interval (is the generated-token counter rising? if not, does a
1-token completion answer in time?) and answers /livez, which the vLLM container's liveness probe asks.

Layers: judge (pure decisions: samples in, verdicts out) below engine (the HTTP client that samples
vLLM) and server (the agent's own HTTP endpoints and loop); main wires them.
"""
