"""fuseline-broker: stores fuseline workflows and hands their steps to workers."""

__version__ = "0.1.0"

from .app import create_app  # noqa: E402
from .extension import Broker  # noqa: E402

__all__ = ["Broker", "create_app", "__version__"]
