"""git_branch on real repositories made with the git binary."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.machine.git import git_branch
from tests.helpers import (
    git,
    git_identity,  # noqa: F401  # autouse: commits need an author
    make_repo,
)

pytestmark = pytest.mark.skipif(
    subprocess.run(["git", "--version"], capture_output=True).returncode != 0,
    reason="the git binary is needed to build test repositories",
)


def test_branch_of_the_repository_and_of_a_subfolder(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "checkout", "--quiet", "-b", "feature/metadata")
    (repo / "src" / "deep").mkdir(parents=True)
    assert git_branch(repo) == "feature/metadata"
    assert git_branch(repo / "src" / "deep") == "feature/metadata"


def test_unborn_branch_of_a_new_repository(tmp_path: Path) -> None:
    assert git_branch(make_repo(tmp_path / "new", branch="trunk", commit=False)) == "trunk"


def test_detached_head_gives_none(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "checkout", "--quiet", "--detach")
    assert git_branch(repo) is None


def test_bare_repository_gives_none(tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch", "main", str(bare))
    assert git_branch(bare) is None


def test_outside_a_repository_or_missing_path_gives_none(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_branch(plain) is None
    assert git_branch(tmp_path / "does-not-exist") is None


def test_worktree_gives_its_own_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    worktree = tmp_path / "worktree"
    git(repo, "worktree", "add", "--quiet", "-b", "side", str(worktree))
    assert git_branch(worktree) == "side"
    assert git_branch(repo) == "main"


def test_submodule_gives_its_own_branch(tmp_path: Path) -> None:
    library = make_repo(tmp_path / "library", branch="lib-main")
    repo = make_repo(tmp_path / "repo")
    git(
        repo, "-c", "protocol.file.allow=always", "submodule", "add", "--quiet", str(library), "lib"
    )
    git(repo / "lib", "checkout", "--quiet", "-b", "lib-work")
    assert git_branch(repo / "lib") == "lib-work"
    assert git_branch(repo) == "main"


def _run_python(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_works_without_a_git_binary(tmp_path: Path) -> None:
    """The branch is read from the files: importing and reading succeed with no git on PATH."""
    repo = make_repo(tmp_path / "repo", branch="no-binary")
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "GIT_PYTHON_REFRESH"}
    env["PATH"] = str(empty_bin)
    code = """
        import sys
        from pathlib import Path
        from agent.machine.git import git_branch
        print(git_branch(Path(sys.argv[1])))
        import git
        print("git binary found:", git.GIT_OK)
    """
    result = _run_python(code, env, str(repo))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["no-binary", "git binary found: False"]


def test_reading_the_branch_starts_no_process(tmp_path: Path) -> None:
    """Only gitpython's import runs `git version`; every read after it is file access."""
    repo = make_repo(tmp_path / "repo")
    worktree = tmp_path / "worktree"
    git(repo, "worktree", "add", "--quiet", "-b", "side", str(worktree))
    code = """
        import sys
        from pathlib import Path
        from agent.machine.git import git_branch
        git_branch(Path(sys.argv[1]))  # imports gitpython
        spawned = []
        sys.addaudithook(
            lambda event, args: spawned.append(event)
            if event in ("subprocess.Popen", "os.posix_spawn", "os.fork", "os.exec")
            else None
        )
        print([git_branch(Path(path)) for path in sys.argv[1:]], spawned)
    """
    result = _run_python(code, dict(os.environ), str(repo), str(worktree), str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['main', 'side', None] []"
