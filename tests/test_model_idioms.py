"""The tutorial's idioms on `GPT`: `GPT.from_pretrained(...)` and nanoGPT's `model.generate(...)`
(`logits, loss = model(x, y)` is checked against transformers in test_hf_parity.py)."""

from pathlib import Path

import torch

from nano_gpt import GPT, GPTConfig, generate, load_pretrained
from nano_gpt.checkpoint import save_checkpoint


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=100, block_size=64)).eval()


def _same_weights(a: GPT, b: GPT) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_from_pretrained_reads_a_hugging_face_folder(tiny_hf_dir: Path) -> None:
    model = GPT.from_pretrained(tiny_hf_dir)
    assert isinstance(model, GPT) and not model.training
    assert (model.config.vocab_size, model.config.n_layer, model.config.n_embd) == (1000, 3, 48)
    assert _same_weights(model, load_pretrained(str(tiny_hf_dir)))


def test_from_pretrained_reads_a_checkpoint_file(tmp_path: Path) -> None:
    trained = _model()
    path = tmp_path / "checkpoint_000010.bin"
    save_checkpoint(path, {"step": 10, "model": trained.state_dict(), "model_config": trained.config.to_dict()})
    loaded = GPT.from_pretrained(str(path))
    assert loaded.config == trained.config and _same_weights(loaded, trained)


def test_model_generate_with_top_k_1_is_generate_greedy() -> None:
    model, prompt = _model(), torch.randint(0, 100, (3, 5), generator=torch.Generator().manual_seed(0))
    out = model.generate(prompt, 20, top_k=1)
    assert out.dtype == torch.long and out.shape == (3, 25)
    assert out.tolist() == generate(model, prompt, 20, greedy=True, eos_token=None)


def test_model_generate_samples_with_torchs_global_generator() -> None:
    model, prompt = _model(), torch.zeros(2, 3, dtype=torch.long)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(model.generate(prompt, 30, temperature=1.0))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert torch.equal(runs[0][:, :3], prompt)
