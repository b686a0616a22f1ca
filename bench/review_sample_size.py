"""How many reviews does a partition need? TREC DL's NIST grades play the reviewer: on each year's judged hard
negatives, the shipped judge's recipe (logistic regression over the twelve similarities) is trained on the other
year (threshold from that year) and flags this year's negatives; `arhn review`'s stratified sample (strata: the
judge's decision x its score band) of n items is "reviewed" by looking up the grade, and the weighted estimate
of kappa with its 95% interval is compared with the kappa on every judged negative of the year.

    .venv/bin/python bench/review_sample_size.py                 # needs ../shared/data; ~15 min (embeddings)
    .venv/bin/python bench/review_sample_size.py --draws 400

Per year and n: the mean absolute error of the estimate, how often the interval holds the whole-year kappa
(coverage), its mean half-width; and, as the baseline in the same run, a simple random sample of the same n
read without weights. Then the smallest n (of those tried) whose mean half-width is <= 0.10 and <= 0.05.
TREC DL's judged negatives are a quarter false negatives; training data has far fewer. Each year is also
measured thinned to 5% false negatives (every true negative kept, false negatives drawn at random, seed 0),
where flagged negatives are rare and the strata matter.
The features are kept in var/bench-cache/ (delete it to embed again).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SIZES = [25, 50, 100, 150, 200, 300, 400, 600]


def features(name: str) -> tuple[np.ndarray, np.ndarray]:
    from judge_features import year

    cache = ROOT / "var" / "bench-cache" / f"judge_features_{name}.npz"
    if cache.exists():
        saved = np.load(cache)
        return saved["x"], saved["y"]
    x, y = year(name)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x=x, y=y)
    return x, y


def cross_year(data: dict, train: str, test: str) -> tuple[np.ndarray, np.ndarray]:
    """The test year's judge scores and flags, from the recipe fitted on the training year."""
    from arhn_pipeline.trained_judge import core

    x_tr, y_tr = data[train]
    judge = core.fit(x_tr, y_tr, core.DEFAULT_EMBEDDERS, trained_on={train: "bench"})
    scores = judge.decision(data[test][0])
    return scores, scores >= judge.threshold


def main() -> None:
    from arhn_pipeline.agreement import metrics
    from arhn_pipeline.review import core

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=200, help="samples drawn per year and size")
    args = parser.parse_args()
    t0 = time.perf_counter()
    data = {name: features(name) for name in ("dl19", "dl20")}
    print(f"features ready in {time.perf_counter() - t0:.0f} s", flush=True)
    print("| year | judged negatives | kappa on all | n reviews | stratified+weighted: mean abs error | coverage | "
          "mean half-width | simple random, unweighted: mean abs error | coverage | mean half-width |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    needed = {}
    for train, test, thinned in [(a, b, t) for a, b in (("dl20", "dl19"), ("dl19", "dl20")) for t in (False, True)]:
        scores, flagged = cross_year(data, train, test)
        y = data[test][1]
        if thinned:  # 5% false negatives: all true negatives, and enough false negatives drawn at random
            rng = np.random.default_rng(0)
            fns = np.flatnonzero(y)
            kept = rng.choice(fns, size=round(0.05 / 0.95 * (~y).sum()), replace=False)
            keep = np.sort(np.concatenate([np.flatnonzero(~y), kept]))
            scores, flagged, y = scores[keep], flagged[keep], y[keep]
            test = f"{test} at 5%"
        keys = [(f"{test}-q", str(i)) for i in range(len(y))]
        pred = {k: bool(f) for k, f in zip(keys, flagged, strict=True)}
        answers = {k: "as_well" if t else "no" for k, t in zip(keys, y, strict=True)}
        tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
        fn = int((~flagged & y).sum())
        target = float(metrics(tp, fp, fn, len(y) - tp - fp - fn)["kappa"])
        negatives = pl.DataFrame({"query_id": [k[0] for k in keys], "passage_id": [k[1] for k in keys]})
        changed = {k: ["judge"] for k, f in pred.items() if f}
        population = negatives.with_columns(
            stratum=pl.Series(core.strata(negatives, changed, dict(zip(keys, scores.tolist(), strict=True))))
        )
        flat = population.with_columns(stratum=pl.lit("all"))
        for n in [s for s in SIZES if s < len(y)]:
            figures = []
            for frame in (population, flat):
                errors, covered, halves = [], 0, []
                for seed in range(args.draws):
                    sample = core.draw(frame, n, seed)
                    e = core.estimate(sample, answers, pred, draws=500, seed=seed)
                    errors.append(abs(e.kappa - target))
                    covered += e.kappa_low <= target <= e.kappa_high
                    halves.append((e.kappa_high - e.kappa_low) / 2)
                figures.append((np.mean(errors), covered / args.draws, np.mean(halves)))
            (err, cov, half), (err0, cov0, half0) = figures
            print(f"| {test} | {len(y)} | {target:.3f} | {n} | {err:.3f} | {cov:.2f} | {half:.3f} | {err0:.3f} | "
                  f"{cov0:.2f} | {half0:.3f} |", flush=True)  # fmt: skip
            for width in (0.10, 0.05):
                if half <= width and (test, width) not in needed:
                    needed[(test, width)] = n
    print()
    for test in ("dl19", "dl20", "dl19 at 5%", "dl20 at 5%"):
        for width in (0.10, 0.05):
            n = needed.get((test, width))
            print(f"{test}: interval +-{width:.2f} from {n} reviews" if n else f"{test}: +-{width:.2f} not reached")
    print(f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
