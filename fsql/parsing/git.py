"""The git commit a project's files come from, recorded with each registered revision."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# A build must not hang on a broken git: the commit is a label, never required.
GIT_TIMEOUT_S = 5.0


def head_commit(root: Path) -> str | None:
    """HEAD's full hash, suffixed ``+dirty`` when files under ``root`` differ from it; None when ``root``
    is not in a git work tree (or git is not installed)."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        head = subprocess.run([git, "-C", str(root), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True,
                              text=True, timeout=GIT_TIMEOUT_S, check=False)
        if head.returncode != 0 or not head.stdout.strip():
            return None
        status = subprocess.run([git, "-C", str(root), "status", "--porcelain", "--", "."], capture_output=True,
                                text=True, timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return f"{commit}+dirty" if status.returncode == 0 and status.stdout.strip() else commit
