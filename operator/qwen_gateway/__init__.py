"""The gateway (`qwen-operator gateway`): one OpenAI-compatible endpoint in front of every QwenInference, with API
keys declared as labelled Secrets, per-key models, request rates, token quotas, health endpoints and metrics.

Layers (checked by import-linter, `make lint`):
  server             the aiohttp application and the command line (I/O: HTTP in and out)
  kube | store       the Kubernetes watches and Events; the limit stores (in memory, or Redis)
  metrics            Prometheus metrics, labelled by model and key *name*
  errors | keys | limits | routes | sse    pure decisions: no I/O, no clock of their own
It imports nothing of the operator's.
"""
