"""Write ``<root>/<id>/model.npy`` for ids 1..N: the seed's bucket layout, on local disk."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def make_models(root: str | Path, count: int = 4, dim: int = 64, seed: int = 0) -> Path:
    root = Path(root)
    rng = np.random.default_rng(seed)
    for model_id in range(1, count + 1):
        folder = root / str(model_id)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "model.npy", rng.standard_normal((dim, dim)).astype(np.float32))
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    print(make_models(args.root, args.count, args.dim))
