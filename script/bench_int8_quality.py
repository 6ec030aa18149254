"""Benchmark: what weight-only int8 costs in quality, on a model trained here.

Trains gpt2-xxs (`nano-gpt train`'s loop, bf16) for --steps steps on a text file (TinyShakespeare by default),
then measures its validation loss on the held-out 10% and its HellaSwag accuracy on synthetic examples
(script/bench_hellaswag.py's), with its weights as trained (fp32) and as `--quantize=int8` stores them; both
under bf16 autocast, as `nano-gpt eval` runs on a CPU where bf16 pays. Target (issue 25): the validation loss moves by
at most 1% relative.

    python script/bench_int8_quality.py --text=/work/shared/data/tinyshakespeare.txt --steps=150
"""

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench scripts

from bench import machine  # noqa: E402
from bench_hellaswag import synthetic_examples  # noqa: E402

from nano_gpt.checkpoint import load_model  # noqa: E402
from nano_gpt.data import ShardLoader  # noqa: E402
from nano_gpt.data.prepare import prepare_dataset  # noqa: E402
from nano_gpt.eval import evaluate_hellaswag, validation_loss  # noqa: E402
from nano_gpt.quantize import quantize_int8  # noqa: E402
from nano_gpt.train import TrainConfig, train  # noqa: E402

SEQUENCE, BATCH = 128, 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, default=Path("/work/shared/data/tinyshakespeare.txt"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--validation-steps", type=int, default=20)
    parser.add_argument("--hellaswag", type=int, default=200, help="synthetic HellaSwag examples")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = Path(tmp) / "ds"
        prepare_dataset(str(args.text), dataset_dir=dataset_dir, num_workers=1)
        config = TrainConfig(model="gpt2-xxs", dataset=str(args.text), dataset_dir=str(dataset_dir), device="cpu",
                             dtype="bf16", compile=False, sequence_length=SEQUENCE, micro_batch_size=BATCH,
                             total_batch_size=SEQUENCE * BATCH, max_steps=args.steps, warmup_steps=args.steps // 10,
                             max_lr=3e-3, validation_steps=0, hellaswag_samples=0, eval_steps=args.steps,
                             checkpoint_dir=str(Path(tmp) / "run"))
        trained = load_model(train(config).checkpoint).eval()
        loader = ShardLoader(dataset_dir, str(args.text), "validation", BATCH, SEQUENCE)
        examples = synthetic_examples(args.hellaswag)
        rows = {}
        for name, model in (("as trained", trained), ("int8 weights", quantize_int8(copy.deepcopy(trained)))):
            loss = validation_loss(model, loader, args.validation_steps, "cpu", torch.bfloat16)
            hellaswag = evaluate_hellaswag(model, examples, "cpu", dtype=torch.bfloat16)
            rows[name] = (loss, hellaswag.acc_norm)
            print(f"{name}: val_loss {loss:.4f} | HellaSwag (synthetic, {len(examples)}) acc_norm {hellaswag.acc_norm:.4f}")
    (base, base_acc), (q, q_acc) = rows["as trained"], rows["int8 weights"]
    change = (q - base) / base
    print(f"int8 vs as trained: val_loss {change:+.3%} relative (target within 1%: {'met' if abs(change) <= 0.01 else 'MISSED'}), "
          f"HellaSwag acc_norm {q_acc - base_acc:+.4f}")


if __name__ == "__main__":
    main()
