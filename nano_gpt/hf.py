"""Conversion between our GPT and the Hugging Face / OpenAI GPT-2 layout (both directions).

OpenAI's GPT-2 used Conv1D layers, which store weights as (in, out); `nn.Linear` stores
(out, in), so those four weights are transposed. Keys may carry a `transformer.` prefix (as
`GPT2LMHeadModel.save_pretrained` writes them) or not (as OpenAI's checkpoints on the Hub do).
"""

import torch

from nano_gpt.config import GPTConfig
from nano_gpt.errors import NanoGPTError
from nano_gpt.tokenizer import EOT_TOKEN, quiet_transformers
from nano_gpt.weights import config_from_fields

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some transformers versions saved: the causal mask and its fill value, not weights.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_PREFIX = "transformer."


# The config.json fields that shape a GPT-2 (with transformers' aliases); anything else in the file is
# metadata (the seed's export, for one, adds its training settings) and is not handed to GPT2Config.
_HF_FIELDS = ("n_positions", "vocab_size", "n_layer", "n_head", "n_embd", "n_inner", "activation_function",
              "layer_norm_epsilon", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
              "tie_word_embeddings", "max_position_embeddings", "num_hidden_layers", "num_attention_heads",
              "hidden_size")


def config_from_hf(hf: dict, source: str = "config.json") -> GPTConfig:
    """Our config from a Hugging Face `config.json` dict, read by `transformers.GPT2Config` (its defaults and
    aliases), every size checked; refuses variants we would compute differently. `source` names the file in errors.

    A config with `n_ctx` but no `n_positions` (the seed's exports) takes its context from `n_ctx`.
    """
    from huggingface_hub.errors import StrictDataclassFieldValidationError
    from transformers import GPT2Config

    if hf.get("model_type", "gpt2") != "gpt2":
        raise NanoGPTError(f"{source}: model_type is {hf.get('model_type')!r}; nano-gpt loads GPT-2 models only")
    fields = {k: hf[k] for k in _HF_FIELDS if k in hf}
    positions = "n_positions"
    if "n_positions" not in hf and "max_position_embeddings" not in hf and "n_ctx" in hf:
        fields["n_positions"], positions = hf["n_ctx"], "n_ctx"
    try:
        with quiet_transformers():
            c = GPT2Config(**fields)
    except StrictDataclassFieldValidationError as e:  # a field of the wrong type: its message names the field
        reason = str(e).splitlines()[-1].strip()
        raise NanoGPTError(f"{source}: {reason.replace(repr('n_positions'), repr(positions))}") from e
    except (TypeError, ValueError) as e:
        raise NanoGPTError(f"{source}: not a valid GPT-2 config ({e})") from e
    names = {"block_size": positions}
    config = config_from_fields({"block_size": c.n_positions, "vocab_size": c.vocab_size, "n_layer": c.n_layer,
                                 "n_head": c.n_head, "n_embd": c.n_embd, "layer_norm_epsilon": c.layer_norm_epsilon},
                                source, names)
    unsupported = {
        "activation_function": (c.activation_function, ("gelu_new", "gelu_pytorch_tanh")),
        "n_inner": (c.n_inner, (None, 4 * c.n_embd)),
        "scale_attn_weights": (c.scale_attn_weights, (True,)),
        "scale_attn_by_inverse_layer_idx": (c.scale_attn_by_inverse_layer_idx, (False,)),
        "reorder_and_upcast_attn": (c.reorder_and_upcast_attn, (False,)),
        "tie_word_embeddings": (c.tie_word_embeddings, (True,)),
    }
    for key, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise NanoGPTError(f"{source}: {key}={value!r}, which GPT-2 as nano-gpt implements does not support")
    return config


def config_to_hf(config: GPTConfig, vocab_size: int, eot_token: int | None = EOT_TOKEN) -> dict:
    """A `GPT2Config`-compatible dict, as in OpenAI's `config.json` on the Hub; `eot_token` is the tokenizer's
    end of text (None for a character vocabulary, which has none)."""
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
        "bos_token_id": eot_token,
        "eos_token_id": eot_token,
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
