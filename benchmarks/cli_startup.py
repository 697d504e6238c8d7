"""Wall time of `biosig --help` and `biosig CMD --help` (target < 0.5 s each).

Neither imports torch, MLflow or scikit-learn: `biosig --help` needs only click, `biosig CMD --help` reads
the command's keys from biosig.commands.configs (numpy and pyarrow come with biosig.data). Medians of
--repeats runs, each a fresh process.

    python benchmarks/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def median_seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    biosig = shutil.which("biosig") or f"{sys.executable} -m biosig"
    for label, extra in (("biosig --help", ["--help"]), ("biosig finetune --help", ["finetune", "--help"]),
                         ("biosig promote --help", ["promote", "--help"])):
        seconds = median_seconds([*biosig.split(), *extra], args.repeats)
        print(f"{label:<24} {seconds:6.2f} s  (target < 0.5 s: {'met' if seconds < 0.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
