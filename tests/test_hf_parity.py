"""Our GPT loaded from a Hugging Face folder must match `transformers` numerically."""

from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from conftest import save_tiny_hf_gpt2
from nano_gpt import GPT, load_pretrained
from nano_gpt.errors import NanoGPTError
from nano_gpt.hf import state_dict_from_hf


def _hf_logits(folder: Path, idx: torch.Tensor) -> torch.Tensor:
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return hf(idx).logits


def test_logits_match_transformers_without_cache(tiny_hf_dir: Path) -> None:
    idx = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(1))
    model = load_pretrained(str(tiny_hf_dir))
    assert (model.config.vocab_size, model.config.n_layer, model.config.n_head, model.config.n_embd) == (1000, 3, 6, 48)
    with torch.no_grad():
        ours, _ = model(idx)
    assert (ours - _hf_logits(tiny_hf_dir, idx)).abs().max().item() < 1e-5


def test_logits_match_transformers_with_kv_cache(tiny_hf_dir: Path) -> None:
    idx = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(2))
    model = load_pretrained(str(tiny_hf_dir))
    caches = model.new_kv_caches(2, 40)
    with torch.no_grad():
        steps = [model(idx[:, :30], caches=caches)[0]]
        steps += [model(idx[:, t : t + 1], caches=caches, input_pos=t)[0] for t in range(30, 40)]
    assert (torch.cat(steps, dim=1) - _hf_logits(tiny_hf_dir, idx)).abs().max().item() < 1e-5


def test_pytorch_model_bin_loads_like_safetensors(tmp_path: Path, tiny_hf_dir: Path) -> None:
    folder = save_tiny_hf_gpt2(tmp_path / "bin", as_bin=True)
    assert (folder / "pytorch_model.bin").exists() and not (folder / "model.safetensors").exists()
    a = load_pretrained(str(folder)).state_dict()
    b = load_pretrained(str(tiny_hf_dir)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_keys_with_and_without_transformer_prefix_convert_alike(tiny_hf_dir: Path) -> None:
    hf_sd = GPT2LMHeadModel.from_pretrained(tiny_hf_dir).state_dict()
    bare = {k.removeprefix("transformer."): v for k, v in hf_sd.items() if k != "lm_head.weight"}
    a, b = state_dict_from_hf(hf_sd), state_dict_from_hf(bare)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_folder_and_offline_hub_name_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(NanoGPTError, match="not found"):
        load_pretrained(str(tmp_path / "nope"))
    with pytest.raises(NanoGPTError, match="local folder"):
        load_pretrained("gpt2")  # HF_HUB_OFFLINE=1 in tests


def test_corrupt_weights_are_a_user_error(tmp_path: Path) -> None:
    folder = save_tiny_hf_gpt2(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(NanoGPTError, match="corrupt"):
        load_pretrained(str(folder))


def test_model_x_y_gives_the_logits_and_loss_of_transformers(tiny_hf_dir: Path) -> None:
    idx = torch.randint(0, 1000, (2, 41), generator=torch.Generator().manual_seed(3))
    model = GPT.from_pretrained(str(tiny_hf_dir))
    hf = GPT2LMHeadModel.from_pretrained(tiny_hf_dir).eval()
    with torch.no_grad():
        logits, loss = model(idx[:, :-1], idx[:, 1:])  # nanoGPT's (x, y): y is x shifted by one
        theirs = hf(idx, labels=idx)  # transformers shifts the labels itself
    torch.testing.assert_close(logits, theirs.logits[:, :-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, theirs.loss, atol=1e-5, rtol=1e-5)
