"""`nano-gpt serve`: the OpenAI completions API through the real `openai` client, on a tiny model, offline."""

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch
import uvicorn

from conftest import assert_one_line_error, run_cli_here
from nano_gpt.checkpoint import read_checkpoint
from nano_gpt.cli.serve import _listen
from nano_gpt.generate import generate
from nano_gpt.serve.app import create_app
from nano_gpt.serve.batcher import Batcher, Event, Job, Sampling

PROMPT = "Hello, I'm a language model,"
KEY = "sekret-key"


class Server:
    """The API on an ephemeral port in a thread of this process, as `nano-gpt serve` runs it."""

    def __init__(self, folder: Path, api_key: str | None = None, **batcher_options: int) -> None:
        loaded = read_checkpoint(str(folder))
        model, self.tokenizer = loaded.model, loaded.tokenizer()
        self.model = model
        self.batcher = Batcher(model, self.tokenizer, **batcher_options)
        sock = _listen("127.0.0.1", 0)
        self.url = "http://127.0.0.1:%d" % sock.getsockname()[1]
        config = uvicorn.Config(create_app(self.batcher, "tiny", api_key), log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    def client(self, api_key: str = "none", **options: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, timeout=30, **options)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def server(tiny_hf_gpt2_vocab_dir: Path) -> Iterator[Server]:
    s = Server(tiny_hf_gpt2_vocab_dir, max_batch_size=16, max_queue=64)
    yield s
    s.stop()


def expected_text(s: Server, prompt: str, max_tokens: int, seed: int, n: int = 1, top_k: int | None = None) -> list[str]:
    """What `generate` alone continues `prompt` with (the library `nano-gpt sample` runs)."""
    ids = s.tokenizer.encode_ordinary(prompt)
    rows = generate(s.model, torch.tensor([ids] * n), max_tokens, top_k=top_k,
                    generator=torch.Generator().manual_seed(seed), vocab_size=s.tokenizer.n_vocab)
    return [s.tokenizer.decode(row[len(ids):]) for row in rows]


def test_completion_answers_with_text_and_usage(server: Server) -> None:
    result = server.client().completions.create(model="tiny", prompt=PROMPT, max_tokens=8, seed=3)
    [choice] = result.choices
    assert result.object == "text_completion" and choice.index == 0
    assert choice.text == expected_text(server, PROMPT, 8, 3)[0]
    assert choice.finish_reason == "length"  # a random model seldom draws end-of-text
    assert result.usage.prompt_tokens == len(server.tokenizer.encode_ordinary(PROMPT))
    assert result.usage.completion_tokens == 8 and result.usage.total_tokens == 8 + result.usage.prompt_tokens
    assert server.client().models.list().data[0].id == "tiny"


def test_stream_sends_the_same_text_in_chunks_and_ends_with_done(server: Server) -> None:
    chunks = list(server.client().completions.create(model="tiny", prompt=PROMPT, max_tokens=10, seed=4, stream=True,
                                                     stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices]) > 1
    assert text == expected_text(server, PROMPT, 10, 4)[0]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices
    raw = httpx.post(server.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "stream": True}, timeout=30)
    events = [line for line in raw.text.split("\n\n") if line]
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: {") for e in events[:-1])


def test_n_and_several_prompts_give_one_choice_each(server: Server) -> None:
    result = server.client().completions.create(model="tiny", prompt=[PROMPT, "The cat"], max_tokens=6, n=3, seed=5)
    assert [c.index for c in result.choices] == list(range(6))
    assert [c.text for c in result.choices[:3]] == expected_text(server, PROMPT, 6, 5, n=3)
    assert [c.text for c in result.choices[3:]] == expected_text(server, "The cat", 6, 5, n=3)


def test_echo_with_logprobs_scores_the_prompt_as_the_model_does(server: Server) -> None:
    ids = server.tokenizer.encode_ordinary(PROMPT)
    result = server.client().completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=2)
    [choice] = result.choices
    assert choice.text == PROMPT
    lp = choice.logprobs
    assert lp.tokens == [server.tokenizer.decode([t]) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    with torch.no_grad():
        expected = server.model(torch.tensor([ids]))[0][0, :-1].log_softmax(-1)  # (T - 1, V)
    want = expected.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert torch.allclose(torch.tensor(lp.token_logprobs[1:]), want, atol=1e-4)
    assert all(len(top) == 2 for top in lp.top_logprobs[1:])
    assert result.usage.completion_tokens == 0 and result.usage.prompt_tokens == len(ids)


def test_lm_eval_local_completions_reads_our_loglikelihoods(server: Server) -> None:
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    ctx, cont = server.tokenizer.encode_ordinary("The cat sat on"), server.tokenizer.encode_ordinary(" the mat")
    # The body lm-eval's local-completions sends for loglikelihood requests (token ids, echo, one new token)
    body = {"model": "tiny", "prompt": [ctx + cont], "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234,
            "echo": True}
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=30).json()
    [(logprob, _)] = LocalCompletionsAPI.parse_logprobs(response, ctxlens=[len(ctx)])
    with torch.no_grad():
        logits = server.model(torch.tensor([ctx + cont]))[0][0, len(ctx) - 1 : -1]
    want = logits.log_softmax(-1).gather(-1, torch.tensor(cont)[:, None]).sum().item()
    assert logprob == pytest.approx(want, abs=1e-4)


def test_generated_logprobs_are_the_sampled_tokens(server: Server) -> None:
    result = server.client().completions.create(model="tiny", prompt=PROMPT, max_tokens=5, logprobs=3, seed=6)
    lp = result.choices[0].logprobs
    assert "".join(lp.tokens) == result.choices[0].text
    assert len(lp.token_logprobs) == 5 and all(x < 0 for x in lp.token_logprobs)
    assert all(len(top) == 3 and max(top.values()) >= x for top, x in zip(lp.top_logprobs, lp.token_logprobs))


@pytest.mark.parametrize("n", [1, 3])
def test_same_seed_gives_the_same_text_as_nano_gpt_sample(server: Server, tiny_hf_gpt2_vocab_dir: Path, n: int) -> None:
    new_tokens = 12
    length = len(server.tokenizer.encode_ordinary(PROMPT)) + new_tokens
    sampled = run_cli_here("sample", f"--pretrained={tiny_hf_gpt2_vocab_dir}", "--seed=42", f"--max-length={length}",
                      f"--num-sequences={n}", "--device=cpu", "--dtype=fp32", PROMPT)
    assert sampled.returncode == 0, sampled.stderr
    served = server.client().completions.create(model="tiny", prompt=PROMPT, max_tokens=new_tokens, seed=42, n=n,
                                                extra_body={"top_k": 50})  # sample's default top-k
    assert sampled.stdout.splitlines() == ["> " + PROMPT + c.text for c in served.choices]


def test_32_concurrent_clients_are_each_answered_with_their_own_text(server: Server) -> None:
    # Greedy, so that each text is comparable with its prompt's alone: under sampling a last-bit difference of
    # a batched matmul can reorder near-equal candidates and change a draw.
    client = server.client()

    def ask(i: int) -> tuple[str, int]:
        prompt, tokens = f"Request number {i} says", 4 + i % 13
        if i % 2:
            stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=tokens, temperature=0, stream=True)
            return "".join(c.choices[0].text for c in stream if c.choices), tokens
        return client.completions.create(model="tiny", prompt=prompt, max_tokens=tokens, temperature=0).choices[0].text, tokens

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, range(32)))
    for i, (text, tokens) in enumerate(answers):
        ids = server.tokenizer.encode_ordinary(f"Request number {i} says")
        [row] = generate(server.model, torch.tensor([ids]), tokens, greedy=True, vocab_size=server.tokenizer.n_vocab)
        assert text == server.tokenizer.decode(row[len(ids):]), i
    load = httpx.get(server.url + "/health").json()
    assert load["running_rows"] == 0 and load["waiting"] == 0 and load["failed"] == 0
    assert load["steps"] < sum(tokens for _, tokens in answers)  # rows of different requests shared steps


BAD_REQUESTS = [
    (b'{"prompt": "Hi", ', 400, None),  # malformed JSON
    (b"\xff\xfe", 400, None),  # not UTF-8
    (b"[" * 100_000, 400, None),  # nested past the parser's depth
    (b'["Hi"]', 400, None),  # not an object
    (b"{}", 400, "prompt"),
    (b'{"prompt": 5}', 400, "prompt"),
    (b'{"prompt": [1, "a"]}', 400, "prompt"),
    (b'{"prompt": ""}', 400, "prompt"),
    (b'{"prompt": []}', 400, "prompt"),
    (b'{"prompt": [[]]}', 400, "prompt"),
    (b'{"prompt": [50257]}', 400, "prompt"),
    (b'{"prompt": [-1]}', 400, "prompt"),
    (b'{"prompt": "Hi", "max_tokens": "8"}', 400, "max_tokens"),
    (b'{"prompt": "Hi", "max_tokens": -1}', 400, "max_tokens"),
    (b'{"prompt": "Hi", "max_tokens": 1000}', 400, "max_tokens"),
    (b'{"prompt": "Hi", "max_tokens": 0}', 400, "max_tokens"),
    (b'{"prompt": "Hi", "max_tokens": 1e400}', 400, "max_tokens"),
    (b'{"prompt": "Hi", "temperature": NaN}', 400, "temperature"),
    (b'{"prompt": "Hi", "temperature": Infinity}', 400, "temperature"),
    (b'{"prompt": "Hi", "temperature": -1}', 400, "temperature"),
    (b'{"prompt": "Hi", "top_p": 0}', 400, "top_p"),
    (b'{"prompt": "Hi", "top_k": 0}', 400, "top_k"),
    (b'{"prompt": "Hi", "n": 1000000}', 400, "n"),
    (b'{"prompt": "Hi", "n": 0}', 400, "n"),
    (b'{"prompt": "Hi", "n": true}', 400, "n"),
    (b'{"prompt": "Hi", "seed": -1}', 400, "seed"),
    (b'{"prompt": "Hi", "seed": 18446744073709551616}', 400, "seed"),
    (b'{"prompt": "Hi", "logprobs": 100}', 400, "logprobs"),
    (b'{"prompt": "Hi", "stop": ' + json.dumps([str(i) for i in range(17)]).encode() + b"}", 400, "stop"),
    (b'{"prompt": "Hi", "stop": [""]}', 400, "stop"),
    (b'{"prompt": "Hi", "stream": "yes"}', 400, "stream"),
    (b'{"prompt": "Hi", "frequency_penalty": 0.5}', 400, "frequency_penalty"),
    (b'{"prompt": "Hi", "stream_options": {"bogus": true}}', 400, "stream_options"),
    (b'{"prompt": "' + b"a" * (9 * 2**20) + b'"}', 413, None),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD_REQUESTS, ids=[b[:40].decode(errors="replace") for b, _, _ in BAD_REQUESTS])
def test_bad_request_gets_openai_error_and_the_server_stays_up(server: Server, body: bytes, status: int, param: str | None) -> None:
    response = httpx.post(server.url + "/v1/completions", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["param"] == param
    assert "Traceback" not in response.text
    assert server.client().completions.create(model="tiny", prompt="Still", max_tokens=2).choices[0].text is not None


def test_api_key_is_required_when_set_and_health_stays_open(tiny_hf_gpt2_vocab_dir: Path, server: Server) -> None:
    guarded = Server(tiny_hf_gpt2_vocab_dir, api_key=KEY)
    try:
        with pytest.raises(openai.AuthenticationError) as refused:
            guarded.client(api_key="wrong").completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
        assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"
        assert httpx.get(guarded.url + "/v1/models").status_code == 401
        assert guarded.client(api_key=KEY).completions.create(model="tiny", prompt=PROMPT, max_tokens=2).choices
        assert httpx.get(guarded.url + "/health").json()["status"] == "ok"
    finally:
        guarded.stop()
    # Without a key any (or no) Authorization is accepted
    assert httpx.get(server.url + "/v1/models").status_code == 200


def test_a_full_queue_answers_429_and_recovers(tiny_hf_gpt2_vocab_dir: Path) -> None:
    s = Server(tiny_hf_gpt2_vocab_dir, max_batch_size=1, max_queue=1)
    gate = threading.Event()
    try:
        # A job whose consumer holds the worker until the gate opens: the next request must wait in the queue.
        s.batcher.submit([Job([1, 2], 1, 1, Sampling(), lambda event: gate.wait(10))])
        with ThreadPoolExecutor(1) as pool:
            while s.batcher.load()["waiting"]:
                time.sleep(0.01)
            queued = pool.submit(s.client().completions.create, model="tiny", prompt=PROMPT, max_tokens=2)
            while not s.batcher.load()["waiting"]:
                time.sleep(0.01)
            with pytest.raises(openai.RateLimitError) as refused:
                s.client(max_retries=0).completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
            assert refused.value.status_code == 429 and refused.value.body["code"] == "queue_full"
            gate.set()
            assert queued.result(timeout=30).choices
    finally:
        gate.set()
        s.stop()


def _slow_server(folder: Path, seconds_per_step: float, **options: object) -> Server:
    """A server whose decode steps take `seconds_per_step` longer, so that a client can leave mid-way."""
    s = Server(folder, **options)
    step = s.batcher._step

    def slow_step() -> None:
        time.sleep(seconds_per_step)
        step()

    s.batcher._step = slow_step
    return s


def test_a_client_that_disconnects_mid_stream_frees_its_slot(tiny_hf_gpt2_vocab_dir: Path) -> None:
    s = _slow_server(tiny_hf_gpt2_vocab_dir, 0.02, max_batch_size=1)  # 120 tokens take seconds
    try:
        body = {"prompt": PROMPT, "max_tokens": 120, "stream": True}
        with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()  # kept: a dropped iterator closes the response
            assert next(lines).startswith("data: {")
            # The model runs in the batcher's thread: the event loop answers while it decodes.
            asked = time.monotonic()
            health = httpx.get(s.url + "/health", timeout=30).json()
            assert time.monotonic() - asked < 120 * 0.02 / 2
            assert health["running_rows"] == 1 and health["steps"] < 120
        start = time.monotonic()
        answer = s.client().completions.create(model="tiny", prompt=PROMPT, max_tokens=2)  # needs the only slot
        assert answer.choices and time.monotonic() - start < 120 * 0.02 / 2
        load = s.batcher.load()
        assert load["cancelled"] == 1 and load["completed"] == 1
    finally:
        s.stop()


def test_a_client_that_drops_a_request_while_its_rows_decode_frees_them(tiny_hf_gpt2_vocab_dir: Path) -> None:
    """Not streamed: the server hears of the client's leaving while every step sends events for its rows."""
    s = _slow_server(tiny_hf_gpt2_vocab_dir, 0.04, api_key=KEY, max_batch_size=4)  # the key's check in the way too
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(s.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 100, "n": 4}, timeout=1,
                       headers={"authorization": f"Bearer {KEY}"})
        deadline = time.monotonic() + 100 * 0.04 / 2
        while s.batcher.load()["running_rows"]:
            assert time.monotonic() < deadline, s.batcher.load()
            time.sleep(0.05)
        assert s.batcher.load()["cancelled"] == 1
        assert s.client(KEY).completions.create(model="tiny", prompt=PROMPT, max_tokens=2).choices
    finally:
        s.stop()


def test_a_client_that_leaves_while_sending_its_request_is_not_an_error(server: Server,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b'{"prompt": "Hi"')
        time.sleep(0.2)
    assert server.client().completions.create(model="tiny", prompt=PROMPT, max_tokens=2).choices
    time.sleep(0.2)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_stop_strings_end_the_text_before_them(server: Server) -> None:
    [full] = expected_text(server, PROMPT, 20, 9)
    stop = full[5:8]
    result = server.client().completions.create(model="tiny", prompt=PROMPT, max_tokens=20, seed=9, stop=[stop])
    assert result.choices[0].text == full[: full.index(stop)] and result.choices[0].finish_reason == "stop"


def test_batcher_refuses_jobs_past_its_queue(tiny_hf_gpt2_vocab_dir: Path) -> None:
    loaded = read_checkpoint(str(tiny_hf_gpt2_vocab_dir))
    model, tokenizer = loaded.model, loaded.tokenizer()
    batcher = Batcher(model, tokenizer, max_batch_size=2, max_queue=2)  # not started: nothing leaves the queue
    events: list[Event] = []
    batcher.submit([Job([1], 1, 1, Sampling(), events.append)] * 2)
    with pytest.raises(Exception, match="waiting"):
        batcher.submit([Job([1], 1, 1, Sampling(), events.append)])


def test_waiting_prompts_of_different_lengths_are_prefilled_and_decoded_together(server: Server) -> None:
    prompts = ["Hi", "The cat sat", "A much longer prompt about the weather in Paris", "Hello, I'm a model"]
    batcher = Batcher(server.model, server.tokenizer, max_batch_size=8)  # jobs queue before the worker starts
    events: dict[int, list[Event]] = {i: [] for i in range(len(prompts))}
    ids = [server.tokenizer.encode_ordinary(p) for p in prompts]
    batcher.submit([Job(ids[i], 1, 6, Sampling(temperature=0), events[i].append, logprobs=1, echo_logprobs=True)
                    for i in range(len(prompts))])
    batcher.start()
    try:
        deadline = time.monotonic() + 30
        while not all(e and e[-1].done for e in events.values()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        batcher.stop()
    for i, prompt_ids in enumerate(ids):
        text = "".join(e.deltas[0].text for e in events[i] if e.deltas)
        [row] = generate(server.model, torch.tensor([prompt_ids]), 6, greedy=True, vocab_size=server.tokenizer.n_vocab)
        assert text == server.tokenizer.decode(row[len(prompt_ids):])
        [scored] = [e.prompt_logprobs for e in events[i] if e.prompt_logprobs]
        with torch.no_grad():
            want = server.model(torch.tensor([prompt_ids]))[0][0, :-1].log_softmax(-1)
        want = want.gather(-1, torch.tensor(prompt_ids[1:])[:, None])[:, 0]
        assert torch.allclose(torch.tensor([t.logprob for t in scored[1:]]), want, atol=1e-4)
    # One decode step per token after the first, for all four at once (the longest prompt in a pass of its own)
    assert batcher.load()["steps"] == 5


def test_serve_command_answers_until_stopped(tiny_hf_gpt2_vocab_dir: Path) -> None:
    env = {**os.environ, "NANO_GPT_API_KEY": KEY}
    process = subprocess.Popen([sys.executable, "-m", "nano_gpt", "serve", f"--pretrained={tiny_hf_gpt2_vocab_dir}",
                                "--port=0", "--device=cpu", "--dtype=fp32"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line, "serve exited before listening"
            if match := re.search(r"at (http://\S+/v1)", line):
                url = match.group(1)
        assert url is not None and "API key required" in line
        client = openai.OpenAI(base_url=url, api_key=KEY, timeout=30)
        while True:  # the log line comes just before uvicorn accepts
            try:
                result = client.completions.create(model="x", prompt=PROMPT, max_tokens=3, seed=1)
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert result.choices[0].finish_reason in ("length", "stop")
    finally:
        process.terminate()  # uvicorn shuts down, then dies of the signal it caught, as a shell expects
        assert process.wait(timeout=30) in (0, -15)
        assert "Traceback" not in process.stderr.read()


def test_serve_start_up_errors_are_one_line(tiny_hf_gpt2_vocab_dir: Path) -> None:
    taken = _listen("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        assert_one_line_error(run_cli_here("serve", f"--pretrained={tiny_hf_gpt2_vocab_dir}", f"--port={port}"),
                              "cannot listen", str(port))
    finally:
        taken.close()
    assert_one_line_error(run_cli_here("serve", "--pretrained=./no-such-folder", "--port=0"), "not found")
    assert_one_line_error(run_cli_here("serve", "--pretrained=x", "--host=no such host", "--port=0"), "--host")


def test_sse_chunks_are_openai_completion_objects(server: Server) -> None:
    raw = httpx.post(server.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2, "stream": True, "n": 2},
                     timeout=30)
    chunks = [json.loads(e[len("data: "):]) for e in raw.text.split("\n\n") if e and e != "data: [DONE]"]
    assert {c["object"] for c in chunks} == {"text_completion"} and len({c["id"] for c in chunks}) == 1
    assert {choice["index"] for c in chunks for choice in c["choices"]} == {0, 1}


def test_too_many_stop_strings_are_counted_in_the_error(server: Server) -> None:
    response = httpx.post(server.url + "/v1/completions", timeout=30,
                          json={"prompt": "Hi", "stop": [str(i) for i in range(17)]})
    assert response.status_code == 400 and "17 stop strings; at most 16" in response.json()["error"]["message"]
