#!/usr/bin/python3
"""Regenerate the committed sample inputs for the SERRANO stand-in (deterministic).

    /usr/bin/python3 testbed/serrano/make_samples.py [OUTPUT_DIR]   (default: this folder)

sample_input.csv   512 rows, 2 signals (case 1):
                   sine_bin8    = sin(2*pi*8*t/512) + N(0, 0.3)
                   price_bin20  = 100 + 5*sin(2*pi*20*t/512) + N(0, 0.5)   (positive, for Black-Scholes)
sample_points.csv  300 2-D points (cases 2 and 3): 100 each around BLOB_CENTERS, sd 0.6, shuffled.
The unit tests rely on these constants (FFT peaks at bins 8 and 20, k-means finds the 3 centres).
"""
import sys
from pathlib import Path

import numpy as np

SEED = 7
N_SAMPLES = 512
SIGNAL_BINS = (8, 20)
BLOB_CENTERS = ((0.0, 0.0), (6.0, 6.0), (0.0, 8.0))


def signals(rng):
    t = np.arange(N_SAMPLES)
    sine = np.sin(2 * np.pi * SIGNAL_BINS[0] * t / N_SAMPLES) + rng.normal(0, 0.3, N_SAMPLES)
    price = 100 + 5 * np.sin(2 * np.pi * SIGNAL_BINS[1] * t / N_SAMPLES) + rng.normal(0, 0.5, N_SAMPLES)
    return np.column_stack([sine, price])


def points(rng):
    blobs = [np.asarray(c) + rng.normal(0, 0.6, (100, 2)) for c in BLOB_CENTERS]
    return rng.permutation(np.vstack(blobs))


def main(out_dir):
    rng = np.random.default_rng(SEED)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savetxt(out_dir / "sample_input.csv", signals(rng), fmt="%.6f", delimiter=",",
               header="sine_bin8,price_bin20", comments="")
    np.savetxt(out_dir / "sample_points.csv", points(rng), fmt="%.5f", delimiter=",",
               header="x,y", comments="")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
