"""The QwenInference API: pydantic models, the single source of the CRD."""
from qwen_operator.api.models import *  # noqa: F401,F403
