"""One line per run of measure.py's CSVs (benchmarks/results/ceiling/*.csv):

    .venv/bin/python benchmarks/results/ceiling/summarize.py

iterations to 150k steps, sampled and trained env steps per iteration, MMER (the max of
return_mean), the env steps where return_mean first reached 0.9 / 0.99, the KL coefficient's
range and the policy's entropy at the end.
"""

from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
rows = []
for path in sorted(HERE.glob("*.csv")):
    data = pd.read_csv(path)
    for (model, task, seed), run in data.groupby(["model", "task", "seed"], sort=False):
        run = run.reset_index(drop=True)

        def first(threshold):
            reached = run.env_steps_lifetime[run.return_mean >= threshold]
            return int(reached.min()) if len(reached) else None

        rows.append({"file": path.stem, "task": task, "model": model, "seed": seed,
                     "iterations": len(run), "sampled/it": round(run.env_steps.mean()),
                     "trained/it": round(run.trained_steps.mean()),
                     "MMER": round(run.return_mean.max(), 4), "steps to 0.9": first(0.9),
                     "steps to 0.99": first(0.99),
                     "kl_coeff": f"{run.kl_coeff.min():.3f}-{run.kl_coeff.max():.3f}",
                     "entropy end": round(run.entropy.iloc[-1], 3)})
columns = list(rows[0])
print("| " + " | ".join(columns) + " |")
print("|" + "---|" * len(columns))
for row in rows:
    print("| " + " | ".join("" if row[c] is None else str(row[c]) for c in columns) + " |")
