"""Model files: the one reader of every file a user hands nano-gpt, and the one writer of our checkpoints.

Which function reads what a user hands the project (every command asks these; nothing else opens a model file):

| what you have | read by |
|---|---|
| our `checkpoint_NNNNNN.bin` (single file) | `read_checkpoint(path)` |
| our sharded `checkpoint_NNNNNN/` folder (FSDP) | `read_checkpoint(path)` |
| allenporter/nano-gpt's `checkpoint_NNNNNN.bin`, karpathy/nanoGPT's `ckpt.pt`, karpathy/build-nanogpt's `model_NNNNN.pt` | `read_checkpoint(path)` |
| a Hugging Face GPT-2 folder (`config.json` + `model.safetensors` or `pytorch_model.bin`) | `read_checkpoint(path)` |
| a Hub repo id or an OpenAI name (`gpt2`, `user/repo`) | `read_checkpoint(name)` (downloaded by `nano_gpt.hub`) |
| just the model, from any of the above | `load_model(name_or_path)` (`nano_gpt.load_pretrained`) |
| a training log (`train_log.jsonl`, or the seed's text log) | `nano_gpt.runlog.read_log` |
| a prepared dataset's shards and manifest | `nano_gpt.data.ShardLoader` (`nano_gpt.data.shards`) |
| a HellaSwag file | `nano_gpt.eval.load_hellaswag` |
| a model folder's own tokenizer | `Checkpoint.tokenizer()` (`nano_gpt.tokenizer.load_tokenizer`) |

`read_checkpoint` returns a `Checkpoint`: the model config, the model (checked once: sizes, keys, shapes, the
tied head), which format it came from, what our runs record (step, settings, metrics, hardware) and, only when
asked, the train state that `TrainState.load_state_dict` takes. Our checkpoints are written by
`save_checkpoint` (a file) or `sharded.save_sharded` (a folder, every rank at once), every file through
`nano_gpt.files.atomic_write`. Each carries CRC-32s of its contents that the reader checks before using it
(`integrity`): damage is one error naming the file, never a model that loads wrong.

Two formats of our own, decided: a run writes one file when one process holds the whole model (every
single-device and DDP run) and a sharded folder only under FSDP, where no process holds it. Writing folders
everywhere would remove the reader's one branch between them, but a single file is what users copy, share
and hand to other tools (and what the peers' checkpoints are); the branch stays inside this package and
`TrainState` (which saves what FSDP gives it), and no command branches on it.

Modules: `layout` (names in a run folder, no torch), `reader`, `writer`, `integrity` (checksums),
`torchfile` (a `torch.save` file read without running code), `peers` (the seed's, nanoGPT's,
build-nanogpt's), `hf_folder`, `sharded` (DCP; imported only for a sharded folder, as it loads FSDP).
A package, not one module: each format keeps its own reader, and `sharded`'s heavy imports stay out of
commands that never meet a folder.
"""

from nano_gpt.checkpoint.layout import checkpoint_path, checkpoints_in, latest_checkpoint
from nano_gpt.checkpoint.reader import HF_FOLDER, OURS, OURS_SHARDED, Checkpoint, OnDisk, load_model, read_checkpoint
from nano_gpt.checkpoint.writer import save_checkpoint

__all__ = ["HF_FOLDER", "OURS", "OURS_SHARDED", "Checkpoint", "OnDisk", "checkpoint_path", "checkpoints_in",
           "latest_checkpoint", "load_model", "read_checkpoint", "save_checkpoint"]
