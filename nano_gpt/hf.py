"""Conversion between our GPT and the Hugging Face / OpenAI GPT-2 layout (both directions).

OpenAI's GPT-2 used Conv1D layers, which store weights as (in, out); `nn.Linear` stores
(out, in), so those four weights are transposed. Keys may carry a `transformer.` prefix (as
`GPT2LMHeadModel.save_pretrained` writes them) or not (as OpenAI's checkpoints on the Hub do).
"""

import torch

from nano_gpt.errors import NanoGPTError
from nano_gpt.config import GPTConfig
from nano_gpt.tokenizer import EOT_TOKEN

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some transformers versions saved: the causal mask and its fill value, not weights.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_PREFIX = "transformer."


def config_from_hf(hf: dict) -> GPTConfig:
    """Our config from a Hugging Face `config.json` dict; refuses variants we would compute differently."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise NanoGPTError(f"model_type is {hf.get('model_type')!r}; nano-gpt loads GPT-2 models only")
    unsupported = {
        "activation_function": (hf.get("activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh")),
        "n_inner": (hf.get("n_inner"), (None, 4 * hf["n_embd"])),
        "scale_attn_weights": (hf.get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), (False,)),
        "reorder_and_upcast_attn": (hf.get("reorder_and_upcast_attn", False), (False,)),
    }
    for key, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise NanoGPTError(f"config.json has {key}={value!r}, which GPT-2 as nano-gpt implements does not support")
    return GPTConfig(
        block_size=hf["n_positions"],
        vocab_size=hf["vocab_size"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
    )


def config_to_hf(config: GPTConfig, vocab_size: int) -> dict:
    """A `GPT2Config`-compatible dict, as in OpenAI's `config.json` on the Hub."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": 0.02,
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "scale_attn_weights": True,
        "use_cache": True,
        "bos_token_id": EOT_TOKEN,
        "eos_token_id": EOT_TOKEN,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


def state_dict_from_hf(hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict from a Hugging Face GPT-2 one (with or without the `transformer.` prefix)."""
    sd = {}
    for key, tensor in hf_sd.items():
        if key == "lm_head.weight" or key.endswith(_IGNORED_SUFFIXES):
            continue  # lm_head is tied to wte
        key = key.removeprefix(_PREFIX)
        sd[_PREFIX + key] = tensor.t().contiguous() if key.endswith(CONV1D_WEIGHTS) else tensor
    if _PREFIX + "wte.weight" in sd:
        sd["lm_head.weight"] = sd[_PREFIX + "wte.weight"]
    return sd


def state_dict_to_hf(sd: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """OpenAI's GPT-2 layout as published on the Hub: no prefix, Conv1D orientation, no lm_head
    (tied), and the vocabulary cut back to `vocab_size` rows (dropping training-time padding)."""
    hf = {}
    for key, tensor in sd.items():
        if key == "lm_head.weight":
            continue
        key = key.removeprefix(_PREFIX)
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        elif key == "wte.weight":
            tensor = tensor[:vocab_size]
        hf[key] = tensor.detach().contiguous().clone()
    return hf
