"""MovieLens 100K as click-through-rate data: features, a per-user time split, and .npz files.

Source: the MovieLens 100K files shipped inside the recbole 1.2.1 wheel
(`recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}`), read directly; recbole itself is
never imported and nothing is downloaded. Install it with `pip install --no-deps recbole==1.2.1`.

Split (deterministic): each user's ratings are sorted by time (ties by item id); the first 80% are
the training period and the last 20% the evaluation set, so every evaluation user has history to
rank against. 2,000 rows of the training period (seed 0) are held out as calibration data and not
trained on.

    python data.py [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
INPUTS = ("user_id", "item_id", "occupation", "gender", "age_bucket", "genres", "dense")
ID_INPUTS = INPUTS[:-1]
MAX_GENRES = 6            # the most genres any ML-100K movie has
AGE_EDGES = (18, 25, 35, 45, 50, 56)   # MovieLens-1M age groups: <18, 18-24, ..., 56+ -> 7 buckets
TRAIN_FRACTION = 0.8
CALIB_SAMPLES = 2000
COLD_THRESHOLD = 20       # fewer training interactions than this -> cold segment (0)


def dataset_dir() -> Path:
    """Folder of the ML-100K files inside the installed recbole package (without importing it)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the example needs recbole's bundled data: pip install --no-deps recbole==1.2.1")
    return Path(spec.submodule_search_locations[0]) / "dataset_example" / "ml-100k"


def read_table(path: Path) -> dict[str, list[str]]:
    """Columns of a recbole atomic file by bare name (`user_id:token` -> `user_id`), as strings."""
    # Plain tab split, not csv: titles contain characters csv would treat as quoting.
    lines = path.read_text(encoding="utf-8").splitlines()
    names = [field.split(":")[0] for field in lines[0].split("\t")]
    rows = [line.split("\t") for line in lines[1:] if line]
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def _dense_ids(values: list[str]) -> tuple[dict[str, int], np.ndarray]:
    """Map each distinct value to 1..N in sorted order (0 stays free for padding / unknown)."""
    mapping = {value: i + 1 for i, value in enumerate(sorted(set(values)))}
    return mapping, np.array([mapping[v] for v in values], dtype=np.int64)


def load(folder: Path | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Per-interaction features (all rows, file order), labels and timestamps, plus the id maps."""
    folder = folder or dataset_dir()
    inter, users, items = (read_table(folder / f"ml-100k.{kind}") for kind in ("inter", "user", "item"))
    # Ids are remapped over the user / item files (not only the rated ones) so the tables cover
    # the whole catalogue, and an id never seen in training still has a (cold) row.
    user_map, _ = _dense_ids(users["user_id"])
    item_map, _ = _dense_ids(items["item_id"])
    occupation_map, occupation = _dense_ids(users["occupation"])
    gender_map, gender = _dense_ids(users["gender"])
    ages = np.array([int(a) for a in users["age"]])
    age_bucket = np.searchsorted(AGE_EDGES, ages, side="right").astype(np.int64) + 1
    genre_map, _ = _dense_ids([g for row in items["class"] for g in row.split()])
    genres = np.zeros((len(item_map) + 1, MAX_GENRES), dtype=np.int64)
    # Two items have no usable year ('unkonwn', 'V'): they get the median year of the catalogue.
    years = np.array([float(y) if y.isdigit() else np.nan for y in items["release_year"]])
    years[np.isnan(years)] = np.nanmedian(years)
    year = np.zeros(len(item_map) + 1)
    for row, (item, classes) in enumerate(zip(items["item_id"], items["class"])):
        ids = [genre_map[g] for g in classes.split()][:MAX_GENRES]
        genres[item_map[item], :len(ids)] = ids
        year[item_map[item]] = years[row]
    # Per-user lookup tables indexed by dense user id, then gathered per interaction.
    by_user = np.zeros((len(user_map) + 1, 4), dtype=np.int64)
    for row, user in enumerate(users["user_id"]):
        by_user[user_map[user]] = (occupation[row], gender[row], age_bucket[row], ages[row])
    user_id = np.array([user_map[u] for u in inter["user_id"]], dtype=np.int64)
    item_id = np.array([item_map[i] for i in inter["item_id"]], dtype=np.int64)
    rating = np.array(inter["rating"], dtype=np.float64)
    features = {
        "user_id": user_id,
        "item_id": item_id,
        "occupation": by_user[user_id, 0],
        "gender": by_user[user_id, 1],
        "age_bucket": by_user[user_id, 2],
        "genres": genres[item_id],
        "raw_year": year[item_id],
        "raw_age": by_user[user_id, 3].astype(np.float64),
        "click": (rating >= 4).astype(np.int64),
        # graded relevance for task 'ranking': 0 for ratings 1-3, 1 for 4, 2 for 5 (relevant = click)
        "relevance": np.clip(rating - 3, 0, None).astype(np.int64),
        "timestamp": np.array(inter["timestamp"], dtype=np.float64).astype(np.int64),
    }
    maps = {"occupation": occupation_map, "gender": gender_map, "genres": genre_map,
            "age_bucket_edges": list(AGE_EDGES),
            "vocab": {"user_id": len(user_map) + 1, "item_id": len(item_map) + 1,
                      "occupation": len(occupation_map) + 1, "gender": len(gender_map) + 1,
                      "age_bucket": len(AGE_EDGES) + 2, "genres": len(genre_map) + 1}}
    return features, maps


def split(features: dict[str, np.ndarray], *, seed: int = 0) -> dict[str, np.ndarray]:
    """Row indices of train / calib / eval: last 20% of each user's ratings in time are eval."""
    order = np.lexsort((features["item_id"], features["timestamp"], features["user_id"]))
    users = features["user_id"][order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    rank = np.arange(len(users)) - np.repeat(starts, counts)     # position within the user's history
    in_train = rank < np.repeat(np.round(TRAIN_FRACTION * counts), counts)
    period, evaluation = order[in_train], order[~in_train]
    picked = np.random.default_rng(seed).permutation(len(period))
    return {"train": np.sort(period[picked[CALIB_SAMPLES:]]),
            "calib": np.sort(period[picked[:CALIB_SAMPLES]]),
            "eval": np.sort(evaluation)}


def build(out: Path, *, seed: int = 0, verbose: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Write {train,calib,eval}.npz, vocab.json and features.json into `out`; return the arrays."""
    features, maps = load()
    index = split(features, seed=seed)
    # Dense features are z-scored with training-row statistics only (no peeking at eval).
    train = index["train"]
    norm = {k: (float(features[k][train].mean()), float(features[k][train].std())) for k in ("raw_year", "raw_age")}
    dense = np.stack([(features[k] - m) / s for k, (m, s) in norm.items()], axis=1).astype(np.float32)
    columns = {name: features[name] for name in ID_INPUTS} | {"dense": dense, "click": features["click"],
                                                        "relevance": features["relevance"]}
    splits = {name: {k: v[rows] for k, v in columns.items()} for name, rows in index.items()}
    # Cold / warm by how often the user / item occurs in the rows the model is trained on.
    for key, segment in (("user_id", "user_segment"), ("item_id", "item_segment")):
        seen = np.bincount(splits["train"][key], minlength=maps["vocab"][key])
        splits["eval"][segment] = (seen[splits["eval"][key]] >= COLD_THRESHOLD).astype(np.int64)
    out.mkdir(parents=True, exist_ok=True)
    for name, arrays in splits.items():
        np.savez_compressed(out / f"{name}.npz", **arrays)
    (out / "vocab.json").write_text(json.dumps(maps["vocab"], indent=2) + "\n")
    info = {k: v for k, v in maps.items() if k != "vocab"} | {
        "dense": ["release_year", "user_age"], "dense_mean_std": list(norm.values()),
        "split": "per user by time: first 80% train period, last 20% eval; calib = 2,000 seeded train-period rows",
        "cold_threshold": COLD_THRESHOLD}
    (out / "features.json").write_text(json.dumps(info, indent=2) + "\n")
    if verbose:
        for name, arrays in splits.items():
            print(f"{name}: {len(arrays['click']):,} rows, click rate {arrays['click'].mean():.3f}")
        ev = splits["eval"]
        print(f"eval cold share: users {1 - ev['user_segment'].mean():.3f} of rows "
              f"({len(np.unique(ev['user_id'][ev['user_segment'] == 0]))} users), "
              f"items {1 - ev['item_segment'].mean():.3f} of rows")
        print("vocab sizes (max id + 1):", maps["vocab"])
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "artifacts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.out, seed=args.seed)


if __name__ == "__main__":
    main()
