"""The branch checked out in a working directory, read from the repository's files.

gitpython reads HEAD and the refs itself, so a refresh starts no `git` process (importing
gitpython runs `git version` once). It must also import on a machine without git, which it only
does when GIT_PYTHON_REFRESH says to stay quiet; the branch is then still read from the files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

# Set before gitpython is first imported (lazily, below), so that a missing git binary is no
# ImportError; a value the user chose is kept.
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

_log = logging.getLogger(__name__)


def git_branch(path: Path) -> str | None:
    """The current branch of the repository containing `path` (a worktree or submodule gives its
    own), or None outside a repository, on a detached HEAD or in a bare repository.

    Blocking (file reads only); never raises.
    """
    try:
        import git  # lazy: importing gitpython costs about 0.1 s and one `git version`

        with git.Repo(path, search_parent_directories=True) as repo:
            if repo.bare or repo.head.is_detached:
                return None
            return repo.active_branch.name
    except Exception as exc:  # a missing path, no repository, unreadable or odd files
        _log.debug("no git branch for %s: %s", path, exc)
        return None
