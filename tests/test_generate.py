import torch

from nano_gpt import GPT, GPTConfig, generate
from nano_gpt.generate import decode_step, sample_next_token


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=100, block_size=64)).eval()


def test_greedy_tokens_are_identical_with_and_without_kv_cache() -> None:
    model, prompt = _model(), torch.randint(0, 100, (3, 5), generator=torch.Generator().manual_seed(0))
    cached = generate(model, prompt, 40, greedy=True, eos_token=None, use_cache=True)
    uncached = generate(model, prompt, 40, greedy=True, eos_token=None, use_cache=False)
    assert cached == uncached and all(len(t) == 45 for t in cached)


def test_past_the_context_the_window_slides_as_in_nanogpt() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=100, block_size=8)).eval()
    prompt = torch.randint(0, 100, (2, 3), generator=torch.Generator().manual_seed(1))
    expected = prompt.clone()
    with torch.no_grad():
        for _ in range(17):  # nanoGPT's generate: crop to the last block_size tokens, take the argmax
            logits = model(expected[:, -8:])[0][:, -1]
            expected = torch.cat([expected, logits.argmax(-1, keepdim=True)], dim=1)
    for use_cache in (True, False):
        assert generate(model, prompt, 17, greedy=True, eos_token=None, use_cache=use_cache) == expected.tolist()
    long_prompt = expected[:, :12]  # a prompt longer than the context is cropped the same way
    assert generate(model, long_prompt, 8, greedy=True, eos_token=None) == expected[:, :20].tolist()


def test_sampling_is_reproducible_with_a_seeded_generator() -> None:
    model, prompt = _model(), torch.zeros(2, 3, dtype=torch.long)
    a = generate(model, prompt, 20, generator=torch.Generator().manual_seed(3), eos_token=None)
    b = generate(model, prompt, 20, generator=torch.Generator().manual_seed(3), eos_token=None)
    assert a == b


def test_a_sequence_stops_at_end_of_text() -> None:
    model = _model()
    with torch.no_grad():  # make token 7 the certain next token after anything
        model.lm_head.weight.zero_()
        model.lm_head.weight[7] = 1.0
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.ln_f.bias.fill_(10.0)
    out = generate(model, torch.zeros(2, 3, dtype=torch.long), 10, eos_token=7)
    assert out == [[0, 0, 0], [0, 0, 0]]


def test_top_k_and_top_p_restrict_the_candidates() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next_token(logits, top_k=2, generator=g).flatten().tolist()) == {0, 1}
    # Probabilities ~0.64, 0.24, 0.09, ...: top_p=0.7 keeps the first two.
    assert set(sample_next_token(logits, top_k=None, top_p=0.7, generator=g).flatten().tolist()) == {0, 1}
    assert set(sample_next_token(logits, greedy=True).flatten().tolist()) == {0}


def test_the_static_decode_step_gives_the_logits_of_the_growing_cache_path() -> None:
    model, prompt = _model(), torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        static, growing = model.new_kv_caches(2, 64), model.new_kv_caches(2, 20)
        model.hidden_states(prompt, static), model.hidden_states(prompt, growing)
        for pos in range(6, 20):
            token = torch.full((2, 1), pos % 100)
            expected = model(token, caches=growing, input_pos=pos)[0][:, -1]
            torch.testing.assert_close(decode_step(model, token, torch.tensor([pos]), static), expected)


def test_compiled_decoding_gives_the_eager_greedy_tokens_in_fp32() -> None:
    model, prompt = _model(), torch.randint(0, 100, (3, 5), generator=torch.Generator().manual_seed(0))
    compiled = generate(model, prompt, 30, greedy=True, eos_token=None, compile=True)
    eager = generate(model, prompt, 30, greedy=True, eos_token=None, compile=False)
    assert compiled == eager and all(len(t) == 35 for t in compiled)
    assert generate(model, prompt[:, :4], 20, greedy=True, eos_token=None, compile=True) == [
        t[:24] for t in generate(model, prompt[:, :4], 20, greedy=True, eos_token=None, compile=False)]

