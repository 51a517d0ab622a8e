"""The BIDS validator (bids-validator-deno, which runs offline) as a function."""

import json
import shutil
import subprocess
from dataclasses import dataclass


class ValidatorMissing(RuntimeError):
    """The validator's executable is not installed."""


@dataclass(frozen=True)
class Finding:
    code: str
    location: str
    message: str

    def __str__(self):
        detail = f": {self.message}" if self.message else ""
        return f"{self.location or '(dataset)'}: {self.code}{detail}"


def validate(bids_dir, *, timeout=600):
    """The errors (not warnings) the BIDS validator finds in `bids_dir`, one Finding each."""
    exe = shutil.which("bids-validator-deno")
    if exe is None:
        raise ValidatorMissing(
            "bids-validator-deno is not installed (pip install bids-validator-deno)"
        )
    proc = subprocess.run(
        [exe, str(bids_dir), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the BIDS validator failed on {bids_dir}: {last}") from None
    return [
        Finding(
            code=issue.get("code", "?") + (f"/{issue['subCode']}" if issue.get("subCode") else ""),
            location=issue.get("location", ""),
            message=_first_line(issue.get("issueMessage")),
        )
        for issue in report.get("issues", {}).get("issues", [])
        if issue.get("severity") == "error"
    ]


def _first_line(text):
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""
