"""What the benchmark scripts share: the commit they measured and their peak memory. Light on purpose (no
torch): a script imports it before choosing what to measure."""

import resource
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git(*args: str) -> str | None:
    """`git <args>` in the repository, stripped; None where git or the repository is missing."""
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def commit() -> dict:
    """The short commit measured and whether tracked files differed from it."""
    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set in MB: VmHWM where Linux has it (per address space, so unaffected
    by a parent's peak, and resettable by `reset_peak_rss`), else `ru_maxrss`."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def reset_peak_rss() -> bool:
    """Restart the peak-RSS count from the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
