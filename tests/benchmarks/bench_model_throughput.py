"""Training throughput of the default OnlineModel at batch 1024: featurise vs train split."""

from __future__ import annotations

import argparse

import torch

from tests.benchmarks.training import measure, measure_pipelined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch_size}")
    for device in devices:
        result = measure(device, args.batch_size, args.batches)
        print(
            f"{device}: {result['examples_per_s']:,.0f} examples/s end to end "
            f"(featurise {result['featurise_ms_per_batch']:.2f} ms + "
            f"train {result['train_ms_per_batch']:.2f} ms per batch; "
            f"train alone {result['train_only_examples_per_s']:,.0f} examples/s)"
        )
        pipelined = measure_pipelined(device, args.batch_size, args.batches)
        print(f"{device}: {pipelined:,.0f} examples/s featurising and training in parallel")


if __name__ == "__main__":
    main()
