"""Write the realistic-brain fixtures: the COSMOS map of the 2016 challenge in the simulated head,
under several protocols, each a BIDS dataset with its truth (`bids_qsm-phantom --chi-map`).

Usage: python benchmarks/simulate_realistic.py OUT_ROOT [--chi-map FILE] [--only NAME ...]

OUT_ROOT/<name> is rewritten for each fixture below; the time and peak memory of each are
printed. The protocols span what the acceptance criteria name: 3 T and 7 T, 3 to 6 echoes, peak
SNR 50 to 100, head tilts up to 20 degrees, several seeds (receive phase, noise, foci).
"""

import argparse
import resource
import sys
import time
from pathlib import Path

from bids_qsm import phantom

COSMOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "qsm2016" / "chi_cosmos.nii.gz"

# name: (B0 T, echo times s, SNR, tilt deg, seed)
FIXTURES = {
    "3t-5echo-snr100": (3.0, (0.004, 0.010, 0.016, 0.022, 0.028), 100, 0.0, 1),
    "3t-5echo-snr50-tilt15": (3.0, (0.004, 0.010, 0.016, 0.022, 0.028), 50, 15.0, 2),
    "3t-3echo-snr80-tilt-10": (3.0, (0.008, 0.018, 0.028), 80, -10.0, 3),
    "7t-4echo-snr80-tilt20": (7.0, (0.003, 0.007, 0.011, 0.015), 80, 20.0, 4),
    "3t-6echo-snr60": (3.0, (0.005, 0.010, 0.015, 0.020, 0.025, 0.030), 60, 5.0, 5),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_root", type=Path)
    parser.add_argument("--chi-map", type=Path, default=COSMOS)
    parser.add_argument("--only", nargs="+", choices=sorted(FIXTURES), default=sorted(FIXTURES))
    args = parser.parse_args(argv)
    if not args.chi_map.is_file():
        sys.exit(f"simulate_realistic: {args.chi_map} not found (give --chi-map)")
    axcodes = ["--chi-axcodes", "RPS"] if args.chi_map.resolve() == COSMOS.resolve() else []
    for name in args.only:
        b0, echo_times, snr, tilt, seed = FIXTURES[name]
        start = time.perf_counter()
        code = phantom.main(
            [
                str(args.out_root / name),
                *("--chi-map", str(args.chi_map), *axcodes),
                *("--b0", str(b0), "--snr", str(snr), "--tilt", str(tilt), "--seed", str(seed)),
                *("--echo-times", *map(str, echo_times)),
            ]
        )
        if code:
            return code
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{name}: {time.perf_counter() - start:.1f} s, peak so far {peak:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
