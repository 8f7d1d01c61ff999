"""Files of a Hugging Face hub repository, found in the local HF cache or downloaded into it.

`fetch_snapshot` returns a repository's snapshot folder holding the files that match the
caller's patterns. A cached copy the caller calls complete is used as it is, without
contacting the hub; with HF_HUB_OFFLINE=1 the cache is the only source; otherwise
huggingface_hub's `snapshot_download` fetches the matching files, with its progress bars
(tqdm.auto: widgets in a notebook). `fetch_file` does the same for one file. Every
failure is a HubModelError naming the repository and the reason: offline and not
cached, no such repository, gated, no such revision or file, hub unreachable.
This module knows no model layout; loader.py says which files a model needs.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional, Sequence

HubErrorReason = Literal["offline", "not_found", "gated", "revision_not_found", "file_not_found", "unreachable"]

# One or two names of letters, digits, "-", "_" and ".", none starting or ending with "-" or "."
# (so "./model" or "../model" are paths, never ids); "--" and ".." are not allowed by the hub.
_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"(?:{_NAME}/)?{_NAME}")


class HubModelError(OSError):
    """A repository on the Hugging Face hub could not be used; `reason` says why."""

    def __init__(self, repo_id: str, reason: HubErrorReason, message: str):
        super().__init__(message)
        self.repo_id = repo_id
        self.reason = reason


def is_repo_id(name: str) -> bool:
    """Whether `name` is spelled like a hub repository id ("org/name", or a bare legacy "name")."""
    return bool(_REPO_ID.fullmatch(name)) and "--" not in name and ".." not in name


def fetch_snapshot(repo_id: str, revision: Optional[str], cache_dir: Optional[str], allow_patterns: Sequence[str],
                   is_complete: Callable[[Path], bool], ignore_patterns: Sequence[str] = ()) -> Path:
    """The snapshot folder of `repo_id` at `revision`, with the top-level files matching `allow_patterns`.

    A cached snapshot for which `is_complete` holds is returned without contacting the hub.
    Otherwise the matching files are downloaded (subfolders and `ignore_patterns` left out).
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        cached = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                                        allow_patterns=[]))
    except LocalEntryNotFoundError:
        cached = None
    if cached is not None and is_complete(cached):
        return cached
    if constants.HF_HUB_OFFLINE:
        raise _offline_error(repo_id, revision, cache_dir, partial=cached is not None)
    with _hub_errors(repo_id, revision, cache_dir):
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                      allow_patterns=list(allow_patterns),
                                      ignore_patterns=["*/*", *ignore_patterns]))


def fetch_file(repo_id: str, filename: str, revision: Optional[str], cache_dir: Optional[str]) -> Path:
    """One file of `repo_id` at `revision`: from the cache if there, else downloaded into it."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise _offline_error(repo_id, revision, cache_dir, partial=False, what=filename) from None
    with _hub_errors(repo_id, revision, cache_dir, filename):
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))


def _cache_folder(cache_dir: Optional[str]) -> str:
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def _offline_error(repo_id: str, revision: Optional[str], cache_dir: Optional[str], partial: bool,
                   what: Optional[str] = None) -> HubModelError:
    at = f" at revision {revision!r}" if revision else ""
    missing = f"{what!r} of {repo_id!r}" if what else f"{repo_id!r}"
    state = "is only partly in" if partial else "is not in"
    return HubModelError(repo_id, "offline", (
        f"{missing}{at} {state} the Hugging Face cache ({_cache_folder(cache_dir)}), and this machine is offline "
        f"(HF_HUB_OFFLINE is set). Download it once where the hub can be reached (unset HF_HUB_OFFLINE, or run "
        f"`hf download {repo_id}`), point download_dir or HF_HUB_CACHE at a cache that holds it, or pass a local "
        f"folder."))


@contextmanager
def _hub_errors(repo_id: str, revision: Optional[str], cache_dir: Optional[str],
                filename: Optional[str] = None) -> Iterator[None]:
    """Turn huggingface_hub's errors into a HubModelError that names the repository and the reason."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    hub = constants.ENDPOINT
    try:
        yield
    except GatedRepoError as exc:  # a subclass of RepositoryNotFoundError: test it first
        raise HubModelError(repo_id, "gated", (
            f"{repo_id!r} is a gated repository on the Hugging Face hub ({hub}): request access on "
            f"{hub}/{repo_id}, then log in on this machine (`hf auth login`, or set HF_TOKEN)")) from exc
    except RepositoryNotFoundError as exc:
        raise HubModelError(repo_id, "not_found", (
            f"{repo_id!r} is neither a local path nor a repository on the Hugging Face hub ({hub}); "
            f"check the name (a private repository also needs `hf auth login` or HF_TOKEN)")) from exc
    except RevisionNotFoundError as exc:
        raise HubModelError(repo_id, "revision_not_found", (
            f"revision {revision!r} of {repo_id!r} does not exist on the Hugging Face hub ({hub}); "
            f"give a branch, a tag or a commit hash of the repository")) from exc
    except LocalEntryNotFoundError as exc:  # raised when the hub could not be reached and the cache lacks the files
        raise HubModelError(repo_id, "unreachable", (
            f"could not download {repo_id!r}: the Hugging Face hub ({hub}) could not be reached and the files are "
            f"not in the cache ({_cache_folder(cache_dir)}). Check the network, HF_ENDPOINT or a proxy; offline, "
            f"set HF_HUB_OFFLINE=1 and pass a cached id or a local folder. ({str(exc).splitlines()[0]})")) from exc
    except EntryNotFoundError as exc:
        raise HubModelError(repo_id, "file_not_found", (
            f"{filename!r} is not a file of {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
            + f" on the Hugging Face hub ({hub})")) from exc
