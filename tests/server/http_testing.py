"""Constants and helpers the HTTP tests share (a module of its own: conftest modules are not for importing)."""


from engine_testing import wait_idle  # noqa: F401  (re-exported for the server tests)

API_KEY = "test-key"
MODEL = "tiny"


