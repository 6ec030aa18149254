from nano_gpt import get_tokenizer


def test_known_strings_encode_to_gpt2_ids() -> None:
    enc = get_tokenizer()
    assert enc.encode_ordinary("First Citizen:") == [5962, 22307, 25]
    assert enc.encode_ordinary("Hello, I'm a language model,") == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    assert enc.eot_token == 50256 and enc.n_vocab == 50257


def test_endoftext_is_special_only_when_allowed() -> None:
    enc = get_tokenizer()
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert 50256 not in enc.encode_ordinary("<|endoftext|>")


def test_round_trip_of_unicode_and_whitespace() -> None:
    enc = get_tokenizer()
    text = "naïve café — 東京\n\n  tabs\tand   spaces 🙂"
    assert enc.decode(enc.encode_ordinary(text)) == text
