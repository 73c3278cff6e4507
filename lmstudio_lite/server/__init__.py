"""The OpenAI-compatible HTTP API.

- ``convert``: pure converters between OpenAI requests/chunks and generate() calls.
- ``routes``: ``create_api(services) -> APIRouter`` (/v1/models, /v1/chat/completions, /v1/completions).
- ``serve``: ``create_app(services) -> FastAPI`` and ``run_serve(args)`` for ``lmstudio-lite serve``.
"""
