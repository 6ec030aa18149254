"""`nano-gpt serve`: an OpenAI-compatible completions API with continuous batching.

`Batcher` (batcher.py) runs the model in a worker thread; `create_app` (app.py) is the HTTP API over it.
Both need the `serve` extra (FastAPI, uvicorn) only for the API.
"""
