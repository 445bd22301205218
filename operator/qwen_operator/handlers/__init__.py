"""kopf registrations. Importing this package registers the handlers."""
from qwen_operator.handlers import qweninference  # noqa: F401
