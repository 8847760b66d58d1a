"""Near-duplicate detection benchmark: ours (flows/curate/minhash.py) against datatrove's MinHash
pipeline, rensa and datasketch, side by side on the same rows.

    # peers live in their own venvs, never in the project's:
    python3.11 -m venv /work/bench-venvs/datasketch && /work/bench-venvs/datasketch/bin/pip install datasketch==2.0.0 numpy polars
    python3.11 -m venv /work/bench-venvs/rensa && /work/bench-venvs/rensa/bin/pip install rensa==0.5.0 numpy polars
    python3.11 -m venv /work/bench-venvs/datatrove && /work/bench-venvs/datatrove/bin/pip install "datatrove[processing]==0.10.1" spacy numpy polars
    # then, from the project root:
    PYTHONPATH=. python bench/dedup.py --rows 100000            # all methods
    PYTHONPATH=. python bench/dedup.py --rows 1000000 --methods ours,rensa,datasketch,datatrove
    PYTHONPATH=. python bench/dedup.py --rows 2000 --methods ours   # a tiny smoke run

The corpus: rows of 30-120 words drawn from a Zipf-distributed 30k-word vocabulary (like running
text, common words repeat). 10% of rows are planted near copies (1-3 word substitutions,
deletions or insertions of a base row, each copy's 5-gram Jaccard to its base >= 0.8; groups of
2-4 rows), 2% are planted hard negatives (copies sharing about half their text, Jaccard < 0.7),
which must NOT be clustered. Every method gets the same parquet file, the same settings (word
5-grams, 112 hashes = 14 bands x 8 rows, threshold 0.8) and runs in its own process; its time
counts from reading the file to cluster labels, and its peak memory is the process's max RSS
(plus its worker processes' max RSS for datatrove, which forks workers).

Scoring is over pairs: a true pair is two rows of the same planted group; a found pair is two rows
the method put in one cluster. A found pair outside the planted groups whose exact Jaccard is >=
0.8 (a duplicate that happened by chance) counts as correct.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHINGLE, BANDS, ROWS, PERMS, THRESHOLD, SEED = 5, 14, 8, 112, 0.8, 1
PEER_VENVS = Path(os.environ.get("STAIRS_BENCH_VENVS", "/work/bench-venvs"))
ROOT = Path(__file__).resolve().parent.parent


# -- corpus --------------------------------------------------------------------------------------
def _shingles(words: list[str], n: int = SHINGLE) -> set[tuple[str, ...]]:
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard_words(a: list[str], b: list[str]) -> float:
    x, y = _shingles(a), _shingles(b)
    return len(x & y) / len(x | y) if x | y else 1.0


def make_corpus(n_rows: int, seed: int = 0):
    """(texts, group id per row (-1 = not planted), hard-negative pairs)."""
    import polars as pl

    rng = np.random.default_rng(seed)
    vocab_size = 30_000
    vocab = np.array([f"{w}{i}" for i, w in enumerate(
        rng.choice(["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "pa"], vocab_size))])
    p = 1.0 / np.arange(1, vocab_size + 1) ** 1.05
    p /= p.sum()
    n_dup_rows = int(n_rows * 0.10)
    n_neg_rows = int(n_rows * 0.02)
    n_base = n_rows - n_dup_rows - n_neg_rows
    lengths = rng.integers(30, 121, n_base)
    flat = rng.choice(vocab_size, size=int(lengths.sum()), p=p)
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    base_ids = [flat[s:s + n] for s, n in zip(starts, lengths)]

    docs = list(base_ids)
    group = np.full(n_rows, -1, dtype=np.int64)
    negatives = []
    # planted groups: a base row and 1-3 near copies
    g = 0
    base_pick = iter(rng.permutation(n_base))
    while len(docs) < n_base + n_dup_rows:
        b = int(next(base_pick))
        group[b] = g
        for _ in range(int(rng.integers(1, 4))):
            if len(docs) >= n_base + n_dup_rows:
                break
            words = docs[b]
            for _attempt in range(10):
                copy = list(words)
                for _e in range(int(rng.integers(1, 4))):
                    op, at = rng.integers(3), int(rng.integers(len(copy)))
                    if op == 0:
                        copy[at] = rng.choice(vocab_size, p=p)
                    elif op == 1 and len(copy) > 10:
                        del copy[at]
                    else:
                        copy.insert(at, rng.choice(vocab_size, p=p))
                if jaccard_words([str(x) for x in words], [str(x) for x in copy]) >= 0.8:
                    break
            else:
                copy = list(words)
            group[len(docs)] = g
            docs.append(np.array(copy))
        g += 1
    # hard negatives: half of a base row, then fresh words
    while len(docs) < n_rows:
        b = int(next(base_pick))
        words = docs[b]
        half = len(words) // 2
        fresh = rng.choice(vocab_size, size=len(words) - half, p=p)
        negatives.append((b, len(docs)))
        docs.append(np.r_[words[:half], fresh])
    order = rng.permutation(n_rows)  # planted rows anywhere, not at the end
    inverse = np.empty(n_rows, dtype=np.int64)
    inverse[order] = np.arange(n_rows)
    docs = [docs[i] for i in order]
    group = group[order]
    negatives = [(int(inverse[a]), int(inverse[b])) for a, b in negatives]
    lens = np.array([len(d) for d in docs])
    words = pl.Series(vocab).gather(np.concatenate(docs).astype(np.int64))
    rows = np.repeat(np.arange(n_rows), lens)
    texts = (pl.DataFrame({"row": rows, "w": words}).group_by("row", maintain_order=True)
             .agg(pl.col("w").str.join(" "))["w"])
    # Sentences and capitals, so normalization matters: every 12th word ends a sentence.
    texts = texts.str.replace_all(r"((?:\S+ ){11}\S+) ", "$1. ").str.to_titlecase()
    return texts, group, negatives


# -- methods (each runs in its own interpreter) --------------------------------------------------
def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _shingle_strings(text: str) -> list[str]:
    w = _words(text)
    if len(w) < SHINGLE:
        return [" ".join(w)]
    return [" ".join(w[i:i + SHINGLE]) for i in range(len(w) - SHINGLE + 1)]


def _union_find(n: int, pairs) -> np.ndarray:
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def run_ours(texts, workdir: Path) -> np.ndarray:
    from flows.curate.minhash import MinHashParams, near_duplicate_clusters

    params = MinHashParams(shingle=SHINGLE, permutations=PERMS, bands=BANDS, rows=ROWS,
                           threshold=THRESHOLD, seed=SEED)
    return near_duplicate_clusters(texts, params, workers=2)


def run_ours_permutations(texts, workdir: Path) -> np.ndarray:
    from flows.curate.minhash import MinHashParams, near_duplicate_clusters

    params = MinHashParams(shingle=SHINGLE, permutations=PERMS, bands=BANDS, rows=ROWS,
                           threshold=THRESHOLD, seed=SEED, scheme="permutations")
    return near_duplicate_clusters(texts, params, workers=2)


def run_rensa(texts, workdir: Path) -> np.ndarray:
    from rensa import RMinHash, RMinHashLSH

    sets = [_shingle_strings(t) for t in texts.to_list()]
    hashes = RMinHash.from_token_sets(sets, PERMS, SEED)  # rensa's bulk constructor
    lsh = RMinHashLSH(THRESHOLD, PERMS, BANDS)
    lsh.insert_many(hashes)
    candidates = lsh.query_all(hashes)
    return _union_find(len(sets), ((i, j) for i, c in enumerate(candidates) for j in c if j != i))


def run_datasketch(texts, workdir: Path) -> np.ndarray:
    from datasketch import MinHash, MinHashLSH

    sets = [[s.encode() for s in _shingle_strings(t)] for t in texts.to_list()]
    hashes = MinHash.bulk(sets, num_perm=PERMS, seed=SEED)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=PERMS, params=(BANDS, ROWS))
    with lsh.insertion_session() as session:
        for i, m in enumerate(hashes):
            session.insert(i, m, check_duplication=False)
    pairs = ((i, j) for i, m in enumerate(hashes) for j in lsh.query(m) if j != i)
    return _union_find(len(sets), pairs)


def run_datatrove(texts, workdir: Path) -> np.ndarray:
    import polars as pl
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.utils.hashing import HashConfig

    tasks = 2
    data = workdir / "datatrove-input"
    shutil.rmtree(workdir / "datatrove", ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    bounds = np.linspace(0, len(texts), tasks + 1).astype(int)
    for t in range(tasks):  # one file per task: rank t reads file t, in order
        pl.DataFrame({"text": texts[bounds[t]:bounds[t + 1]],
                      "id": [str(i) for i in range(bounds[t], bounds[t + 1])]}).write_parquet(
            data / f"{t:05d}.parquet")
    cfg = MinhashConfig(n_grams=SHINGLE, num_buckets=BANDS, hashes_per_bucket=ROWS, seed=SEED,
                        hash_config=HashConfig(precision=64))
    out = workdir / "datatrove"
    common = {"logging_dir": str(out / "logs"), "start_method": "fork"}
    s1 = LocalPipelineExecutor(pipeline=[ParquetReader(str(data)),
                                         MinhashDedupSignature(str(out / "sigs"), config=cfg)],
                               tasks=tasks, workers=2, **common)
    s2 = LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(str(out / "sigs"), str(out / "buckets"),
                                                             config=cfg)],
                               tasks=BANDS, workers=2, depends=s1,
                               **{**common, "logging_dir": str(out / "logs2")})
    s3 = LocalPipelineExecutor(pipeline=[MinhashDedupCluster(str(out / "buckets"), str(out / "remove"),
                                                             config=cfg, save_cluster_id=True)],
                               tasks=1, workers=1, depends=s2,
                               **{**common, "logging_dir": str(out / "logs3")})
    s3.run()
    labels = np.arange(len(texts), dtype=np.int64)
    cluster_first: dict[int, int] = {}
    for t in range(tasks):
        f = out / "remove" / f"{t:06d}.clusters"
        if not f.exists():
            continue
        raw = np.frombuffer(f.read_bytes(), dtype="<u4").reshape(-1, 2)
        for doc, cid in raw:
            row = int(bounds[t] + doc)
            labels[row] = cluster_first.setdefault(int(cid), row)
    return labels


METHODS = {"ours": run_ours, "ours-permutations": run_ours_permutations, "rensa": run_rensa,
           "datasketch": run_datasketch, "datatrove": run_datatrove}


def _python_for(method: str) -> str:
    if method.startswith("ours"):
        return sys.executable
    return str(PEER_VENVS / method / "bin" / "python")


def child(method: str, corpus: str, out: str) -> None:
    """Entry point inside the method's own interpreter."""
    import polars as pl

    workdir = Path(out).parent
    t0 = time.perf_counter()
    texts = pl.read_parquet(corpus)["text"]
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    labels = METHODS[method](texts, workdir)
    seconds = time.perf_counter() - t0
    np.save(out, labels)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    Path(out).with_suffix(".json").write_text(json.dumps({
        "seconds": seconds, "peak_rss_mb": (self_rss + kids_rss) / 1024,
        "loaded_rss_mb": loaded_rss / 1024}))


# -- scoring -------------------------------------------------------------------------------------
def cluster_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    order = np.argsort(labels, kind="stable")
    sl = labels[order]
    cuts = np.flatnonzero(np.r_[True, sl[1:] != sl[:-1], True])
    pairs = set()
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b - a > 1:
            members = np.sort(order[a:b])
            if b - a > 200:  # a giant cluster is a failure; count its pairs without listing them
                raise RuntimeError(f"cluster of {b - a} rows: method merged unrelated rows")
            pairs |= {(int(x), int(y)) for i, x in enumerate(members) for y in members[i + 1:]}
    return pairs


def score(labels: np.ndarray, group: np.ndarray, texts) -> dict:
    truth = cluster_pairs(np.where(group >= 0, group + len(group), np.arange(len(group))))
    found = cluster_pairs(labels)
    extra = found - truth
    lucky = sum(1 for a, b in extra
                if jaccard_words(_words(texts[a]), _words(texts[b])) >= THRESHOLD)
    correct = len(found & truth) + lucky
    return {"true_pairs": len(truth), "found_pairs": len(found),
            "recall": len(found & truth) / max(len(truth), 1),
            "precision": correct / max(len(found), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--methods", default="ours,rensa,datasketch,datatrove")
    ap.add_argument("--workdir", default="/tmp/stairs-bench-dedup")
    ap.add_argument("--timeout", type=int, default=3600, help="Seconds per method.")
    ap.add_argument("--json", help="Also write the results here.")
    args = ap.parse_args()
    work = Path(args.workdir) / str(args.rows)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.parquet"
    truth_file = work / "truth.npz"
    import polars as pl

    if not corpus.exists() or not truth_file.exists():
        t = time.perf_counter()
        texts, group, negatives = make_corpus(args.rows)
        pl.DataFrame({"text": texts}).write_parquet(corpus)
        np.savez(truth_file, group=group, negatives=np.array(negatives, dtype=np.int64).reshape(-1, 2))
        print(f"corpus: {args.rows} rows in {time.perf_counter() - t:.1f}s -> {corpus}", flush=True)
    texts = pl.read_parquet(corpus)["text"]
    truth = np.load(truth_file)
    group, negatives = truth["group"], truth["negatives"]
    results = []
    for method in args.methods.split(","):
        out = work / f"{method}.npy"
        py = _python_for(method)
        if not Path(py).exists():
            print(f"{method}: skipped, no venv at {py}", flush=True)
            continue
        env = {**os.environ, "PYTHONPATH": str(ROOT) if method.startswith("ours") else ""}
        load = os.getloadavg()[0]
        # Own session: on timeout the whole group goes, datatrove's forked workers included.
        proc = subprocess.Popen([py, __file__, "_child", method, str(corpus), str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            print(f"{method}: over {args.timeout}s, stopped", flush=True)
            results.append({"method": method, "rows": args.rows, "timeout": args.timeout,
                            "load_before": load})
            continue
        if proc.returncode != 0:
            print(f"{method}: failed\n{stderr[-3000:]}", flush=True)
            continue
        stats = json.loads(out.with_suffix(".json").read_text())
        labels = np.load(out)
        quality = score(labels, group, texts)
        merged_negatives = int(sum(labels[a] == labels[b] for a, b in negatives))
        row = {"method": method, "rows": args.rows, **stats, **quality,
               "rows_per_s": args.rows / stats["seconds"], "hard_negatives_merged": merged_negatives,
               "hard_negatives": len(negatives), "load_before": load}
        results.append(row)
        print(f"{method:>18}: {stats['seconds']:8.1f}s  {row['rows_per_s']:9.0f} rows/s  "
              f"peak {stats['peak_rss_mb']:7.0f} MB (corpus loaded {stats['loaded_rss_mb']:5.0f})  "
              f"recall {quality['recall']:.4f}  precision {quality['precision']:.4f}  "
              f"neg merged {merged_negatives}/{len(negatives)}  load {load:.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(*sys.argv[2:5])
    else:
        main()
