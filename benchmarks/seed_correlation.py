"""Are a study's seeds independent samples? Pairwise correlation of the per-iteration mean
episode return between the seeds of each (task, model) of a finished study.

    python benchmarks/seed_correlation.py results/seed_independence

A memoryless model on a task it cannot learn should show independent noise across seeds
(correlations near 0); seeds that share environment streams correlate (issue 18: 0.5-0.8).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.study.results import RETURN_MEAN, STUDY_FILE


def correlations(study: Path) -> pd.DataFrame:
    """One row per pair of seeds of a (task, label): Pearson's r over the iterations both ran."""
    trials = json.loads((study / STUDY_FILE).read_text())["trials"]
    curves = {(t["task"], t["label"], t["seed"]):
              pd.read_csv(study / t["name"] / "progress.csv")[RETURN_MEAN].to_numpy()
              for t in trials if (study / t["name"] / "progress.csv").is_file()}
    rows = []
    for (task, label, a), (task_b, label_b, b) in itertools.combinations(sorted(curves), 2):
        if (task, label) == (task_b, label_b):
            n = min(len(curves[task, label, a]), len(curves[task, label, b]))
            r = np.corrcoef(curves[task, label, a][:n], curves[task, label, b][:n])[0, 1]
            rows.append({"task": task, "model": label, "seeds": f"{a}-{b}",
                         "iterations": n, "r": round(float(r), 2)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a study folder (<output>/<name>)")
    print(correlations(parser.parse_args().study).to_string(index=False))


if __name__ == "__main__":
    main()
