"""`nano-gpt serve`: an OpenAI-compatible completions API over a model."""

import logging
import socket
from typing import Annotated, Optional

import typer

from nano_gpt.cli.common import (
    CheckpointOption,
    DeviceOption,
    DtypeOption,
    PretrainedOption,
    QuantizeOption,
    read_model,
)
from nano_gpt.defaults import Quantize
from nano_gpt.errors import NanoGPTError

logger = logging.getLogger(__name__)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a port in use is an error at once."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as e:
        raise NanoGPTError(f"--host={host} is not an address this machine can listen on ({e})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise NanoGPTError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port or stop what uses it") from None
    return sock


def serve(
    pretrained: PretrainedOption = None,
    checkpoint: CheckpointOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quantize: QuantizeOption = Quantize.none,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one, logged).")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="NANO_GPT_API_KEY", show_envvar=True,
                                                   help="Require 'Authorization: Bearer KEY' on /v1/*.")] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Sequences decoded together; requests past it wait.")] = 16,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests waiting for room; past it the answer is 429.")] = 64,
) -> None:
    """Serve pretrained GPT-2 weights (default gpt2) or a checkpoint over OpenAI's completions API.

    POST /v1/completions (prompt, max_tokens, temperature, top_p, top_k, n, stop, seed, stream, logprobs, echo),
    GET /v1/models and GET /health. Requests that arrive while others decode join the running batch.
    """
    try:
        import uvicorn

        from nano_gpt.serve.app import create_app
    except ImportError as e:
        raise NanoGPTError(f"nano-gpt serve needs FastAPI and uvicorn ({e.name} is missing): "
                           "pip install 'nano-gpt[serve]'") from None
    from nano_gpt.generate import for_inference
    from nano_gpt.memory import check_fits, decode_bytes
    from nano_gpt.runtime import Runtime
    from nano_gpt.serve.batcher import Batcher

    if api_key == "":
        raise NanoGPTError("--api-key (or $NANO_GPT_API_KEY) is empty; give a key or unset it")
    sock = _listen(host, port)
    try:
        loaded = read_model(pretrained, checkpoint)
        model, tokenizer = loaded.model, loaded.tokenizer()
        runtime = Runtime.build(device, dtype, "decode", model.config)
        c = model.config
        check_fits(decode_bytes(c, max_batch_size, c.block_size, c.block_size, runtime.dtype, tokenizer.n_vocab, True),
                   runtime.device, f"{max_batch_size} sequences of {c.block_size} tokens", "lower --max-batch-size")
        for_inference(model.to(runtime.device), runtime.dtype, quantize)  # the decode precision, as `sample` does
        name = pretrained or (str(checkpoint) if checkpoint is not None else "gpt2")
        app = create_app(Batcher(model, tokenizer, max_batch_size, max_queue), name, api_key)
        bound_host, bound_port = sock.getsockname()[:2]
        logger.info("serving %s on %s at http://%s:%d/v1 (%s)", name, runtime.describe(), bound_host, bound_port,
                    "API key required" if api_key else "no API key")
        config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
