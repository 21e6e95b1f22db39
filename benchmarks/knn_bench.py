"""k-NN classification speed and memory: sslvit's ``knn_scores`` against scikit-learn and raw FAISS.

    python benchmarks/knn_bench.py                       # 100k x 384 bank, 10k queries, 1000 classes, k=20
    python benchmarks/knn_bench.py --bank 20000 --queries 2000 --repeats 1

Random features with cluster structure (1000 class centres, each sample its centre plus Gaussian
noise), written once; then each method runs in a fresh Python process that reads them, so its
memory is its own:

* ``sslvit``: ``sslvit.eval.knn.knn_scores`` (FAISS flat inner-product index over the L2-normalised
  bank, queries in chunks, DINO's exp(sim / T) votes) and the argmax: the k-NN classifier end to end.
* ``sklearn``: ``KNeighborsClassifier(algorithm="brute", metric="cosine", weights=exp((1 - d) / T),
  n_jobs=-1)``: cosine distance d = 1 - sim, so the weights are DINO's; fit and predict.
* ``faiss``: raw FAISS, no classifier: normalise, ``IndexFlatIP.add``, ``search`` at k; the floor.

Time: median wall time of ``--repeats`` runs in that process (index building included).  Memory: the
process's peak resident set (VmHWM) minus its resident set just before the first run (data and
libraries loaded), i.e. what the method itself added at its peak; tracemalloc would miss what numpy,
FAISS and BLAS allocate in C.  Top-1 and agreement with scikit-learn's predictions check that all
compute the same classifier.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("sslvit", "sklearn", "faiss")


def make_data(path: Path, bank: int, queries: int, dim: int, classes: int, noise: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    labels = rng.integers(0, classes, bank)
    qlabels = rng.integers(0, classes, queries)
    x = centres[labels] + noise * rng.standard_normal((bank, dim), dtype=np.float32)
    q = centres[qlabels] + noise * rng.standard_normal((queries, dim), dtype=np.float32)
    np.savez(path, bank=x, labels=labels, queries=q, qlabels=qlabels)


def rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def method(name: str, k: int, temperature: float, classes: int):
    """A function (bank, labels, queries) -> predicted labels [Q] (or neighbour ids for raw FAISS)."""
    if name == "sslvit":
        import torch

        from sslvit.eval.knn import knn_scores

        def run(x, y, q):
            scores = knn_scores(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(q), k, temperature, classes)
            return scores.argmax(dim=1).numpy()
    elif name == "sklearn":
        from sklearn.neighbors import KNeighborsClassifier

        def run(x, y, q):
            knn = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine", n_jobs=-1,
                                       weights=lambda d: np.exp((1.0 - d) / temperature))
            return knn.fit(x, y).predict(q)
    elif name == "faiss":
        import faiss

        def run(x, y, q):
            x, q = x.copy(), q.copy()  # normalize_L2 works in place; the caller's arrays stay as they are
            faiss.normalize_L2(x)
            faiss.normalize_L2(q)
            index = faiss.IndexFlatIP(x.shape[1])
            index.add(x)
            return index.search(q, k)[1]
    else:
        raise ValueError(name)
    return run


def child(args: argparse.Namespace) -> None:
    data = np.load(Path(args.data) / "data.npz")
    x, y, q, qy = data["bank"], data["labels"], data["queries"], data["qlabels"]
    run = method(args.child, args.k, args.temperature, args.classes)
    before = rss_mib("VmRSS")
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = run(x, y, q)
        seconds.append(time.perf_counter() - start)
    peak = rss_mib("VmHWM")
    if args.child != "faiss":
        np.save(Path(args.data) / f"{args.child}.npy", out)
    top1 = float((out == qy).mean()) if args.child != "faiss" else None
    print(json.dumps({"method": args.child, "seconds": seconds, "rss_before_mib": before, "peak_mib": peak, "top1": top1}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bank", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=384)  # ViT-S
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--noise", type=float, default=3.0, help="noise std around unit-variance centres: top-1 well below 1")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        make_data(Path(tmp) / "data.npz", args.bank, args.queries, args.dim, args.classes, args.noise)
        results = {}
        for name in args.methods:
            cmd = [sys.executable, __file__, "--child", name, "--data", tmp, *sys.argv[1:]]
            run = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[name] = json.loads(run.stdout.strip().splitlines()[-1])
        agree = None
        if {"sslvit", "sklearn"} <= set(results):
            agree = float((np.load(Path(tmp) / "sslvit.npy") == np.load(Path(tmp) / "sklearn.npy")).mean())
    print(f"bank {args.bank} x {args.dim}, {args.queries} queries, {args.classes} classes, k={args.k}, "
          f"T={args.temperature}; median of {args.repeats} runs, each method in a fresh process")
    print("| method | seconds (median) | vs scikit-learn | vs raw FAISS | peak memory added, MiB | top-1 |")
    print("|---|---|---|---|---|---|")
    for r in results.values():
        r["seconds_median"] = statistics.median(r["seconds"])
    for name, r in results.items():
        t = r["seconds_median"]
        vs_sk = f"{results['sklearn']['seconds_median'] / t:.1f}x faster" if "sklearn" in results else "-"
        vs_fa = f"{t / results['faiss']['seconds_median']:.2f}x its time" if "faiss" in results else "-"
        top1 = f"{r['top1']:.4f}" if r["top1"] is not None else "(search only)"
        print(f"| {name} | {t:.2f} | {vs_sk} | {vs_fa} | {r['peak_mib'] - r['rss_before_mib']:.0f} | {top1} |")
    if agree is not None:
        print(f"sslvit and scikit-learn predict the same class for {agree:.2%} of the queries")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
