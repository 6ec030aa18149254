"""Tokens to the same loss: GPT-2's recipe (AdamW + warmup/cosine) against Muon + warmup-stable-decay.

Both recipes train the same 4-layer, 4-head, 256-wide GPT-2 (GPT-2's tokenizer, sequences of 256) from the same
initial weights on the same TinyShakespeare batches, through `nano-gpt train` itself, for the same number of
tokens. Reports validation loss against tokens for both, the tokens Muon + WSD needs to reach AdamW + cosine's
final validation loss, and the wall time of a training step and of the optimizer step alone for each.

    python script/bench_recipes.py --text=tinyshakespeare.txt                  # 2M tokens each
    python script/bench_recipes.py --text=tinyshakespeare.txt --tokens=250000  # a quick look (~15 min on 2 cores)

Writes <out>/{adamw,muon}/train_log.jsonl, <out>/results.json and <out>/recipes.png (`nano-gpt plot` of both
logs). Without --text the corpus is downloaded into the project cache.
"""

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import machine  # noqa: E402
from nano_gpt import GPT, GPTConfig  # noqa: E402
from nano_gpt.checkpoint import save_checkpoint  # noqa: E402
from nano_gpt.plot import plot_logs, save_figure  # noqa: E402
from nano_gpt.runlog import TrainingLog, read_log  # noqa: E402
from nano_gpt.runtime import Runtime  # noqa: E402
from nano_gpt.train import TrainConfig, train  # noqa: E402
from nano_gpt.train.optim import make_optimizers, set_lr  # noqa: E402
from nano_gpt.train.step import train_step  # noqa: E402

SHAPE = GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=256)
SEQUENCE = 256
RECIPES = {"adamw": dict(optimizer="adamw", lr_schedule="cosine"), "muon": dict(optimizer="muon", lr_schedule="wsd")}


def prepare_data(out: Path, text: Path | None) -> Path:
    """TinyShakespeare tokenized by the project's own `prepare_dataset`, from --text or the download cache."""
    from nano_gpt.data.prepare import prepare_dataset

    dataset_dir = out / "dataset_cache"
    if text is not None:  # a private cache holding the given copy, as the download would have put it
        cache = out / "cache"
        (cache / "tinyshakespeare").mkdir(parents=True, exist_ok=True)
        shutil.copy(text, cache / "tinyshakespeare" / "input.txt")
        os.environ["NANO_GPT_CACHE"] = str(cache)
    prepare_dataset("tinyshakespeare", dataset_dir=dataset_dir, num_workers=1)
    return dataset_dir


def initial_weights(out: Path, seed: int) -> Path:
    """One random init that both recipes fine-tune from (`--pretrained`), so they differ only in the recipe."""
    torch.manual_seed(seed)
    model = GPT(SHAPE)
    path = out / "init.bin"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": SHAPE.to_dict()})
    return path


def run_recipe(name: str, args: argparse.Namespace, dataset_dir: Path, init: Path) -> TrainingLog:
    steps = args.tokens // args.batch_tokens
    config = TrainConfig(
        pretrained=str(init), dataset="tinyshakespeare", dataset_dir=str(dataset_dir), device=args.device,
        dtype=args.dtype, compile=False, sequence_length=SEQUENCE, micro_batch_size=args.micro_batch,
        total_batch_size=args.batch_tokens, max_steps=steps, warmup_steps=max(1, steps // 20), max_lr=args.max_lr,
        muon_lr=args.muon_lr, eval_steps=max(1, steps // args.evals), validation_steps=args.validation_steps,
        hellaswag_samples=0, checkpoint_dir=str(args.out / name), checkpoint_steps=10**9, overwrite=True,
        **RECIPES[name])
    train(config)
    return read_log(args.out / name / "train_log.jsonl", label=f"{config.optimizer} + {config.lr_schedule}")


def tokens_to_reach(log: TrainingLog, target: float) -> float | None:
    """Tokens at which the validation loss first reaches `target`, linear between evaluations; None if never."""
    tokens, losses = log.series("val", "val_loss", x="tokens")
    for i, (t, loss) in enumerate(zip(tokens, losses)):
        if loss <= target:
            if i == 0:
                return t
            t0, l0 = tokens[i - 1], losses[i - 1]
            return t0 + (t - t0) * (l0 - target) / (l0 - loss)
    return None


def step_times(name: str, args: argparse.Namespace, repeats: int) -> dict[str, float]:
    """Median seconds of one whole training step (one micro-batch) and of the optimizer steps alone, at the
    benchmark's shape, on a fixed batch: what each recipe adds per step, apart from data and evaluation."""
    config = TrainConfig(max_steps=100, warmup_steps=1, max_lr=args.max_lr, muon_lr=args.muon_lr,
                         **RECIPES[name]).resolved("gpt2-xs")
    runtime = Runtime.build(args.device, args.dtype, "train", SHAPE)
    torch.manual_seed(0)
    model = GPT(SHAPE).to(runtime.device)
    optimizers = make_optimizers(model, config, fused=runtime.has_fused_adamw)
    set_lr(optimizers, config, 50)
    batch = (torch.randint(0, SHAPE.vocab_size, (args.micro_batch, SEQUENCE)),) * 2
    scaler = runtime.grad_scaler()
    whole, update = [], []
    for i in range(repeats + 1):  # the first is a warm-up
        runtime.sync()
        t0 = time.perf_counter()
        train_step(model, optimizers, scaler, lambda: batch, runtime, grad_accum=1, grad_clip=1.0)
        runtime.sync()
        t1 = time.perf_counter()
        for optimizer in optimizers:  # the gradients are still there: time the update on its own
            optimizer.step()
        runtime.sync()
        if i:
            whole.append(t1 - t0)
            update.append(time.perf_counter() - t1)
    return {"train_step_s": statistics.median(whole), "optimizer_step_s": statistics.median(update)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, help="a local copy of TinyShakespeare's input.txt (default: download)")
    parser.add_argument("--tokens", type=int, default=2_000_000, help="training tokens for each recipe")
    parser.add_argument("--batch-tokens", type=int, default=8 * SEQUENCE * 2, help="tokens per optimizer step")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--max-lr", type=float, default=1e-3, help="AdamW's peak lr (both recipes)")
    parser.add_argument("--muon-lr", type=float, default=None, help="Muon's peak lr (default: train's default)")
    parser.add_argument("--evals", type=int, default=20, help="validation evaluations per run")
    parser.add_argument("--validation-steps", type=int, default=8, help="batches per evaluation")
    parser.add_argument("--timing-repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--only", choices=tuple(RECIPES), help="train one recipe (the other's log is reused)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench_recipes"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    print(machine())

    dataset_dir = prepare_data(args.out, args.text)
    init = initial_weights(args.out, args.seed)
    logs = {}
    for name in RECIPES:
        if args.only in (None, name):
            logs[name] = run_recipe(name, args, dataset_dir, init)
        else:
            logs[name] = read_log(args.out / name / "train_log.jsonl", label=name)
    target = logs["adamw"].series("val", "val_loss", x="tokens")[1][-1]
    budget = logs["adamw"].series("val", "val_loss", x="tokens")[0][-1]
    reach = tokens_to_reach(logs["muon"], target)
    times = {name: step_times(name, args, args.timing_repeats) for name in RECIPES}
    results = {
        "machine": machine(), "tokens_per_recipe": budget, "batch_tokens": args.batch_tokens,
        "final_val_loss": {name: log.series("val", "val_loss")[1][-1] for name, log in logs.items()},
        "val_loss_by_tokens": {name: list(zip(*log.series("val", "val_loss", x="tokens"))) for name, log in logs.items()},
        "muon_tokens_to_adamw_final": reach, "muon_token_ratio": reach / budget if reach is not None else None,
        "step_times": times,
        "train_step_ratio": times["muon"]["train_step_s"] / times["adamw"]["train_step_s"],
        "optimizer_step_ratio": times["muon"]["optimizer_step_s"] / times["adamw"]["optimizer_step_s"],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    save_figure(plot_logs(list(logs.values())), args.out / "recipes.png")
    print(json.dumps({k: v for k, v in results.items() if k != "val_loss_by_tokens"}, indent=2))


if __name__ == "__main__":
    main()
