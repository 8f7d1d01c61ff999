"""Errors nbllm raises for a user's bad input, carrying the name of the offending parameter.

`InvalidParameter` is a ValueError, so callers that catch ValueError keep working; the
HTTP server reads `.param` to fill the OpenAI error's "param" field.
"""

from __future__ import annotations


class InvalidParameter(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param
