"""k-NN classification speed and memory: sslvit's ``knn_scores`` against scikit-learn and raw FAISS.

    python benchmarks/knn_bench.py                       # 100k x 384 bank, 10k queries, 1000 classes, k=20
    python benchmarks/knn_bench.py --bank 20000 --queries 2000 --repeats 1 --ivf 64:4

Random features with cluster structure (1000 class centres, each sample its centre plus Gaussian
noise), written once; then each method runs in a fresh Python process that reads them, so its
memory is its own:

* ``sslvit``: ``sslvit.eval.knn.knn_scores`` (FAISS flat inner-product index over the L2-normalised
  bank, queries in chunks, DINO's exp(sim / T) votes) and the argmax: the k-NN classifier end to end.
* ``sklearn``: ``KNeighborsClassifier(algorithm="brute", metric="cosine", weights=exp((1 - d) / T),
  n_jobs=-1)``: cosine distance d = 1 - sim, so the weights are DINO's; fit and predict.
* ``faiss``: raw FAISS, no classifier: normalise, ``IndexFlatIP.add``, ``search`` at k; the floor.

and, for each ``--ivf NLIST:NPROBE``, the approximate index of ``tools/knn_eval.py --index ivf``:

* ``sslvit`` ivf: ``build_index(bank, "ivf", NLIST, NPROBE)`` (k-means on NLIST x
  ``IVF_TRAIN_PER_CELL`` sampled rows, then the bank added), ``search`` and ``votes``: what
  ``knn_scores`` does, over that index instead of the flat one; and the argmax.
* ``faiss`` ivf: raw FAISS ``IndexIVFFlat`` with the same NLIST, NPROBE and number of training
  points (``cp.max_points_per_centroid``): normalise, train, add, search; the floor for that index.

Time: median wall time of ``--repeats`` runs in that process (index building, k-means training
included).  Memory: the process's peak resident set (VmHWM) minus its resident set just before the
first run (data and libraries loaded), i.e. what the method itself added at its peak; tracemalloc
would miss what numpy, FAISS and BLAS allocate in C.  Accuracy: top-1 against the true labels; the
fraction of queries given the same class as sslvit's exact (flat) classifier; and the fraction of
the exact k nearest neighbours (raw FAISS flat's ids) that a method's search found.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

METHODS = ("sslvit", "sklearn", "faiss")
IVF_METHODS = ("sslvit", "faiss")  # scikit-learn has no inverted-file index
EXACT_LABELS = "sslvit"  # the rows whose predictions and neighbours the others are checked against
EXACT_IDS = "faiss"

Cells = Optional[tuple[int, int]]  # (nlist, nprobe) of an IVF index; None: the flat index


def cells(spec: str) -> tuple[int, int]:
    """'NLIST:NPROBE' -> (nlist, nprobe)."""
    try:
        nlist, nprobe = (int(v) for v in spec.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{spec!r} is not NLIST:NPROBE, e.g. 256:8") from None
    if min(nlist, nprobe) < 1:
        raise argparse.ArgumentTypeError(f"{spec!r}: NLIST and NPROBE must be at least 1")
    return nlist, nprobe


def tag(name: str, ivf: Cells) -> str:
    """The name of one run: its results and its saved outputs go by it."""
    return name if ivf is None else f"{name}-ivf{ivf[0]}x{ivf[1]}"


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


def method(name: str, k: int, temperature: float, classes: int, ivf: Cells = None, train_per_cell: int = 0):
    """A function (bank, labels, queries) -> (predicted labels [Q] or None, neighbour ids [Q, k] or None)."""
    if name == "sslvit" and ivf is None:
        import torch

        from sslvit.eval.knn import knn_scores

        def run(x, y, q):
            scores = knn_scores(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(q), k, temperature, classes)
            return scores.argmax(dim=1).numpy(), None
    elif name == "sslvit":
        import torch

        from sslvit.eval.knn import build_index, search, votes

        def run(x, y, q):
            index = build_index(torch.from_numpy(x), "ivf", *ivf)
            found = list(search(index, torch.from_numpy(q), k))
            y = torch.from_numpy(y)
            scores = torch.cat([votes(s, y[i], temperature, classes) for _, s, i in found])  # [Q, C], as knn_scores
            return scores.argmax(dim=1).numpy(), torch.cat([i for _, _, i in found]).numpy()
    elif name == "sklearn":
        from sklearn.neighbors import KNeighborsClassifier

        def run(x, y, q):
            knn = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine", n_jobs=-1,
                                       weights=lambda d: np.exp((1.0 - d) / temperature))
            return knn.fit(x, y).predict(q), None
    elif name == "faiss":
        import faiss

        def run(x, y, q):
            x, q = x.copy(), q.copy()  # normalize_L2 works in place; the caller's arrays stay as they are
            faiss.normalize_L2(x)
            faiss.normalize_L2(q)
            if ivf is None:
                index = faiss.IndexFlatIP(x.shape[1])
            else:
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], ivf[0], faiss.METRIC_INNER_PRODUCT)
                index.cp.max_points_per_centroid = train_per_cell  # FAISS samples nlist x this many rows, as sslvit does
                index.train(x)
                index.nprobe = ivf[1]
            index.add(x)
            return None, index.search(q, k)[1]
    else:
        raise ValueError(name)
    return run


def child(args: argparse.Namespace) -> None:
    data = np.load(Path(args.data) / "data.npz")
    x, y, q, qy = data["bank"], data["labels"], data["queries"], data["qlabels"]
    run = method(args.child, args.k, args.temperature, args.classes, args.cells, args.train_per_cell)
    before = rss_mib("VmRSS")
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        labels, ids = run(x, y, q)
        seconds.append(time.perf_counter() - start)
    peak = rss_mib("VmHWM")
    name = tag(args.child, args.cells)
    for kind, out in (("labels", labels), ("ids", ids)):
        if out is not None:
            np.save(Path(args.data) / f"{name}.{kind}.npy", out)
    top1 = float((labels == qy).mean()) if labels is not None else None
    print(json.dumps({"method": args.child, "ivf": args.cells, "seconds": seconds, "rss_before_mib": before,
                      "peak_mib": peak, "top1": top1}))


def accuracy(tmp: Path, results: dict) -> None:
    """Adds to each result ``agree`` (same class as the exact sslvit classifier) and ``recall``
    (fraction of the exact k nearest ids found), where it has the outputs and the exact run was made."""
    exact_labels, exact_ids = tmp / f"{EXACT_LABELS}.labels.npy", tmp / f"{EXACT_IDS}.ids.npy"
    for name, r in results.items():
        labels, ids = tmp / f"{name}.labels.npy", tmp / f"{name}.ids.npy"
        r["agree"] = float((np.load(labels) == np.load(exact_labels)).mean()) if labels.exists() and exact_labels.exists() else None
        if ids.exists() and exact_ids.exists():
            ids, exact = np.load(ids), np.load(exact_ids)  # [Q, k] each; IVF pads with -1, which no exact id equals
            r["recall"] = float((exact[:, :, None] == ids[:, None, :]).any(axis=2).mean())
        else:
            r["recall"] = None


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
    p.add_argument("--ivf", nargs="*", type=cells, default=[(256, 8), (256, 32)], metavar="NLIST:NPROBE",
                   help="IVF indexes to time for sslvit and raw FAISS as well (default: 256:8 256:32; none: --ivf)")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--cells", type=cells, help=argparse.SUPPRESS)
    p.add_argument("--train-per-cell", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    runs = [(name, None) for name in args.methods]
    runs += [(name, ivf) for ivf in args.ivf for name in args.methods if name in IVF_METHODS]
    train_per_cell = 0
    if any(ivf for _, ivf in runs):
        from sslvit.eval.knn import IVF_TRAIN_PER_CELL as train_per_cell  # raw FAISS trains on as many points
    with tempfile.TemporaryDirectory() as tmp:
        make_data(Path(tmp) / "data.npz", args.bank, args.queries, args.dim, args.classes, args.noise)
        results = {}
        for name, ivf in runs:
            cmd = [sys.executable, __file__, "--child", name, "--data", tmp, "--train-per-cell", str(train_per_cell),
                   *sys.argv[1:], *(["--cells", f"{ivf[0]}:{ivf[1]}"] if ivf else [])]
            run = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[tag(name, ivf)] = json.loads(run.stdout.strip().splitlines()[-1])
        accuracy(Path(tmp), results)
    print(f"bank {args.bank} x {args.dim}, {args.queries} queries, {args.classes} classes, k={args.k}, "
          f"T={args.temperature}; median of {args.repeats} runs, each method in a fresh process")
    print("| method | index | seconds (median) | vs scikit-learn | vs raw FAISS, same index | peak memory added, MiB "
          f"| top-1 | same class as exact sslvit | exact top-{args.k} found |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results.values():
        r["seconds_median"] = statistics.median(r["seconds"])
    for name, r in results.items():
        t, ivf = r["seconds_median"], r["ivf"]
        floor = results.get(tag("faiss", ivf))
        vs_sk = f"{results['sklearn']['seconds_median'] / t:.1f}x faster" if "sklearn" in results else "-"
        vs_fa = f"{t / floor['seconds_median']:.2f}x its time" if floor else "-"
        index = "flat" if ivf is None else f"ivf nlist {ivf[0]} nprobe {ivf[1]}"
        cols = [f"{r[c]:.4f}" if r[c] is not None else "-" for c in ("top1", "agree", "recall")]
        print(f"| {r['method']} | {index} | {t:.2f} | {vs_sk} | {vs_fa} | {r['peak_mib'] - r['rss_before_mib']:.0f} | "
              + " | ".join(cols) + " |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
