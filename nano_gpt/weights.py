"""A GPT from a config and weights that someone else wrote, every field and shape checked first.

Checkpoints, Hugging Face folders and other projects' files all end here (read by `nano_gpt.checkpoint`;
this module reads no file), so a bad file is one line naming it and the field, and sizes are checked
before anything is allocated: the config's fields against sane ranges, then the expected shapes
(computed on the meta device, for free) against the tensors the file holds.
"""

import math
from collections.abc import Mapping

import torch

from nano_gpt.config import GPTConfig
from nano_gpt.errors import NanoGPTError
from nano_gpt.model import GPT

# Far beyond any GPT-2 (1024 positions, 50257 tokens, 48 layers, 1600 wide), small enough that a
# typo such as n_layer=10**9 is refused before the model is built.
SIZE_LIMITS = {"block_size": 1 << 20, "vocab_size": 1 << 24, "n_layer": 1 << 10, "n_head": 1 << 12, "n_embd": 1 << 16}
_TIED = ("lm_head.weight", "transformer.wte.weight")


def config_from_fields(fields: Mapping, source: str, names: Mapping[str, str] | None = None) -> GPTConfig:
    """Our config from the size fields a file gives; `names` maps our field names to the file's, for messages.

    Fields other than the sizes and `layer_norm_epsilon` are ignored.
    """
    names = names or {}
    sizes = {}
    for field, limit in SIZE_LIMITS.items():
        name = names.get(field, field)
        value = fields.get(field)
        if field not in fields:
            needed = ", ".join(names.get(f, f) for f in SIZE_LIMITS)
            raise NanoGPTError(f"{source}: no {name}; a GPT-2 config needs {needed}")
        if type(value) is not int:  # bool is an int subclass, and True is no size
            raise NanoGPTError(f"{source}: {name} is {value!r}, not an integer")
        if not 1 <= value <= limit:
            raise NanoGPTError(f"{source}: {name}={value} is out of range (1 to {limit})")
        sizes[field] = value
    if sizes["n_embd"] % sizes["n_head"]:
        raise NanoGPTError(f"{source}: {names.get('n_head', 'n_head')}={sizes['n_head']} does not divide "
                           f"{names.get('n_embd', 'n_embd')}={sizes['n_embd']}")
    eps = fields.get("layer_norm_epsilon", GPTConfig.layer_norm_epsilon)
    if type(eps) not in (int, float) or not math.isfinite(eps) or not 0 < eps < 1:
        raise NanoGPTError(f"{source}: layer_norm_epsilon is {eps!r}, not a number between 0 and 1")
    return GPTConfig(**sizes, layer_norm_epsilon=float(eps))


def expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of a GPT with `config` and its shape, without allocating the weights."""
    with torch.device("meta"):
        return {key: tuple(t.shape) for key, t in GPT(config).state_dict().items()}


def _layer_count(keys: list[str]) -> int:
    layers = {int(k.split(".")[2]) for k in keys if k.startswith("transformer.h.") and k.split(".")[2].isdigit()}
    return max(layers) + 1 if layers else 0


def _check_weights(config: GPTConfig, sd: Mapping, source: str) -> None:
    if not isinstance(sd, Mapping) or not sd:
        raise NanoGPTError(f"{source}: holds no state dict of weights")
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise NanoGPTError(f"{source}: entry {key!r} is not a floating-point tensor; is this a model's weights?")
    expected = expected_shapes(config)
    if _layer_count(list(sd)) != config.n_layer:
        raise NanoGPTError(f"{source}: the weights have {_layer_count(list(sd))} layers but the config says "
                           f"n_layer={config.n_layer}")
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise NanoGPTError(f"{source}: the weights are not a GPT-2's ({what})")
    for key, shape in expected.items():
        if tuple(sd[key].shape) != shape:
            field = {"transformer.wpe.weight": f"n_positions (block_size) is {config.block_size}",
                     "transformer.wte.weight": f"vocab_size is {config.vocab_size}",
                     "lm_head.weight": f"vocab_size is {config.vocab_size}"}.get(key, f"n_embd is {config.n_embd}")
            raise NanoGPTError(f"{source}: {key} has shape {tuple(sd[key].shape)} but the config needs {shape}: "
                               f"its {field}")
    head, wte = sd[_TIED[0]], sd[_TIED[1]]
    if head.data_ptr() != wte.data_ptr() and not torch.equal(head, wte):
        raise NanoGPTError(f"{source}: lm_head.weight differs from wte.weight; GPT-2 ties its input and output "
                           "embeddings, and nano-gpt loads only tied models")


def model_from_weights(config: GPTConfig, state_dict: Mapping, source: str) -> GPT:
    """A GPT with `config` holding `state_dict` (our key names; lm_head may be left out, it is tied to wte).

    `source` names the file in errors. The model is in fp32, in training mode, as `GPT(config)` is.
    """
    sd = dict(state_dict) if isinstance(state_dict, Mapping) else state_dict
    if isinstance(sd, dict) and _TIED[0] not in sd and _TIED[1] in sd:
        sd[_TIED[0]] = sd[_TIED[1]]
    _check_weights(config, sd, source)
    model = GPT(config)
    model.load_state_dict(sd)
    return model
