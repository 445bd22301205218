"""engine.extraArgs: which `vllm serve` flags a user may add, judged the way vLLM's parser reads them.

vllm_flags.yaml (beside this file) lists every flag of the pinned vLLM, read from its argument parser.
vLLM normalises a long flag's name ('_' -> '-', before any '=' or '.'), takes short aliases (-tp),
and argparse accepts unambiguous prefixes (--api-k). So a token is judged by its canonical name:
it must be a full flag of the pinned vLLM (prefixes are refused: they are easy to misread and
they stop working when vLLM adds a flag), and not one a spec field owns. The same judgement runs
twice: as a CEL rule at admission (extra_args_rules) and in the operator (extra_args_problems),
for objects stored before a rule existed. A table test checks that they agree.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

VLLM_FLAGS: dict[str, Any] = yaml.safe_load((Path(__file__).parent / "vllm_flags.yaml").read_text())
VLLM_VERSION: str = VLLM_FLAGS["vllm_version"]

# Flags a spec field or the operator owns, or that would bypass what they guard.
OWNED_FLAGS: dict[str, str] = {
    "--model": "spec.model.name",
    "--served-model-name": "spec.model.servedName",
    "--host": "the operator (it always binds 0.0.0.0)",
    "--port": "the operator (port 8000)",
    "--uds": "the operator (it serves TCP port 8000)",
    "--api-key": "spec.auth.apiKeySecretRef (a key in args would leak)",
    "--config": "the spec (a config file could set any flag, the API key included)",
    "--tensor-parallel-size": "spec.engine.tensorParallelSize",
    "--max-model-len": "spec.model.maxModelLen",
    "--gpu-memory-utilization": "spec.engine.gpuMemoryUtilization",
    "--max-num-seqs": "spec.engine.maxNumSeqs",
    "--max-num-batched-tokens": "spec.engine.maxNumBatchedTokens",
    "--revision": "spec.model.revision",
    "--quantization": "spec.model.quantization",
    "--kv-cache-dtype": "spec.engine.kvCacheDtype",
    "--reasoning-parser": "spec.model.thinking.reasoningParser",
    "--enable-auto-tool-choice": "spec.model.toolCalling.enabled",
    "--tool-call-parser": "spec.model.toolCalling.parser",
    "--default-chat-template-kwargs": "spec.model.thinking.enabledByDefault",
    "--download-dir": "the operator (model cache volume)",
    "--shutdown-timeout": "spec.engine.shutdownTimeoutSeconds",
    "--help": "nothing: vllm serve would print help and exit",
}

FLAG_TOKEN = r"^--?[A-Za-z]"  # a token that argparse reads as an option (not a value such as -1)


def _known_names() -> dict[str, str]:
    """Every spelling vLLM accepts in full -> its canonical long flag (--no-X -> --X)."""
    names = {flag: flag for flag in VLLM_FLAGS["flags"]}
    names.update({f"--no-{flag[2:]}": flag for flag in VLLM_FLAGS["negatable"]})
    names.update(VLLM_FLAGS["aliases"])
    return names


KNOWN_NAMES: dict[str, str] = _known_names()
REMOVED_FLAGS: dict[str, str] = VLLM_FLAGS.get("removed") or {}
DENIED_NAMES: dict[str, str] = {name: canonical for name, canonical in KNOWN_NAMES.items() if canonical in OWNED_FLAGS}


def flag_name(token: str) -> str | None:
    """The name vLLM's parser sees in token (None when token is a value, not a flag)."""
    if not re.match(FLAG_TOKEN, token):
        return None
    if token.startswith("--"):
        return "--" + token[2:].split("=", 1)[0].split(".", 1)[0].replace("_", "-")
    if re.match(r"^-O[0-9]", token):
        return "-O"
    return token.split("=", 1)[0].split(".", 1)[0]


def extra_args_problems(args: list[str]) -> list[str]:
    """Why each refused token of extraArgs is refused, in words (empty when all may pass).

    Only flag names are quoted, never values: `--api_key=SECRET` must not land in a status.
    """
    problems = []
    for token in args:
        name = flag_name(token)
        if name is None:
            continue
        if name in DENIED_NAMES:
            canonical = DENIED_NAMES[name]
            spelled = "" if name == canonical else f" (vLLM reads it as {canonical})"
            problems.append(f"{name}{spelled} is owned by {OWNED_FLAGS[canonical]}")
        elif name in REMOVED_FLAGS:
            problems.append(f"vLLM {VLLM_VERSION} removed {name}: {REMOVED_FLAGS[name]}")
        elif name not in KNOWN_NAMES:
            problems.append(f"{name} is not a flag of vllm serve {VLLM_VERSION} (write flags in full: prefixes are refused)")
    return problems


def _cel_map(names: list[str]) -> str:
    return "{" + ", ".join(f"'{n}': true" for n in sorted(names)) + "}"


def _cel_name(var: str) -> str:
    """CEL for flag_name(var), for a token that matches FLAG_TOKEN."""
    return (
        f"({var}.startsWith('--') ? '--' + {var}.substring(2).split('=')[0].split('.')[0].replace('_', '-')"
        f" : ({var}.matches('^-O[0-9]') ? '-O' : {var}.split('=')[0].split('.')[0]))"
    )


def extra_args_item_rules() -> list[dict[str, str]]:
    """The CEL rules on each item of engine.extraArgs: the same judgement as extra_args_problems.
    Per item (not over the list), so the message can name the flag at a cost the API server accepts."""
    name = _cel_name("self")
    denied = _cel_map(list(DENIED_NAMES))
    allowed = _cel_map([n for n in KNOWN_NAMES if n not in DENIED_NAMES])
    is_flag = f"self.matches('{FLAG_TOKEN}')"
    owned_list = ", ".join(OWNED_FLAGS)
    return [
        {
            "rule": f"!{is_flag} || !({name} in {denied})",
            "messageExpression": f"'engine.extraArgs may not set ' + {name} + ': a spec field or the operator owns it "
            f"(owned, in every spelling vLLM accepts: {owned_list})'",
            "message": f"engine.extraArgs may not set a flag a spec field or the operator owns: {owned_list}",
        },
        {
            "rule": f"!{is_flag} || {name} in {denied} || {name} in {allowed}",
            "messageExpression": f"'engine.extraArgs: ' + {name} + ' is not a flag of vllm serve {VLLM_VERSION} "
            "(write flags in full: prefixes are refused; removed flags: " + ", ".join(REMOVED_FLAGS) + ")'",
            "message": f"engine.extraArgs holds a flag that vllm serve {VLLM_VERSION} does not know (write flags in full)",
        },
    ]
