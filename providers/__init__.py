"""Upstream provider adapters, their shared usage and error types, and local token counting.

One module per upstream protocol (`openai_compat` for now). Every adapter reports usage as
`Usage` and raises `UpstreamError`, so the proxy handles all upstreams alike. `tokens` counts
tokens locally, and `mock_upstream` is a mock upstream server for development and tests.
"""

from providers.errors import UpstreamError, UpstreamErrorKind
from providers.openai_compat import CompletionResult, usage_from_chunk
from providers.usage import InvalidUsageError, Usage, usage_from_openai

__all__ = [
    "CompletionResult",
    "InvalidUsageError",
    "UpstreamError",
    "UpstreamErrorKind",
    "Usage",
    "usage_from_chunk",
    "usage_from_openai",
]
