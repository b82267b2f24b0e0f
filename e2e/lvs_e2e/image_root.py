"""The built image's root filesystem, where the lab VM can run the agent from it.

The end-to-end tier tests the artifact users install: deploy/image/build.sh
builds the image (skipped when it is up to date), ``docker export`` of a
container made from it gives its root filesystem, and that is unpacked on the
host outside /tmp (the guest's tmpfs hides the host's /tmp), under the cache
directory, one tree per image id (a second run with the same image reuses it).
The VM sees the tree through its read-only host-root share; lvs_e2e.sandbox
runs the agent chrooted into it with the image's environment.

The DaemonSet's mount points (the kubelet makes them in a container's root)
are made in the tree here, since the guest cannot write to it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("TAG", "kube-lvs:dev")
META = ".kube-lvs-export.json"  # written last: a tree without it is incomplete


def cache_dir() -> Path:
    return Path(os.environ.get("KUBE_LVS_CACHE") or Path.home() / ".cache" / "kube-lvs") / "image-root"


@dataclass(frozen=True)
class ImageRoot:
    path: Path  # the unpacked root filesystem
    image_id: str  # sha256:...
    env: tuple[str, ...]  # the image's Config.Env, "NAME=value" each

    def exe_of(self, pid_root: str, exe: str) -> bool:
        """Whether a process whose /proc/PID/root and /proc/PID/exe read as
        given runs a program of this tree. Read from another mount namespace
        the links may carry the reader's view of the host's root in front
        (the lab guest mounts it at /newroot)."""
        root = Path(pid_root)
        tail = len(self.path.parts) - 1  # the tree's path without its leading /
        return (root.parts[-tail:] == self.path.parts[1:] and Path(exe).is_relative_to(root)
                and Path(exe) != root)


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True, timeout=600).stdout.strip()


def build(log=print) -> None:
    """deploy/image/build.sh: starts dockerd if needed, builds the image unless
    it already carries the hash of its inputs."""
    r = subprocess.run(["bash", str(REPO / "deploy" / "image" / "build.sh")], capture_output=True, text=True,
                       timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"image build failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    for line in r.stdout.splitlines():
        if line.startswith("== image:"):
            log(line[3:])


def export(mount_points: Iterable[str] = (), image: str = IMAGE, root: Path | None = None) -> ImageRoot:
    """The root filesystem of ``image``, unpacked under ``root`` (default: the
    cache directory) unless an earlier export of the same image id is there;
    ``mount_points`` (absolute paths) exist in it afterwards. Exports of other
    image ids are removed."""
    base = root or cache_dir()
    image_id = _docker("image", "inspect", "-f", "{{.Id}}", image)
    tree = base / image_id.removeprefix("sha256:")[:16]
    if not (tree / META).exists():
        partial = tree.with_name(tree.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        cid = _docker("create", "--network=none", image, "true")
        try:
            exporter = subprocess.Popen(["docker", "export", cid], stdout=subprocess.PIPE)
            subprocess.run(["tar", "-x", "--numeric-owner", "-C", str(partial)], stdin=exporter.stdout,
                           check=True, timeout=600)
            exporter.stdout.close()
            if exporter.wait(60) != 0:
                raise RuntimeError(f"docker export {cid} failed")
        finally:
            _docker("rm", "-f", cid)
        env = json.loads(_docker("image", "inspect", "-f", "{{json .Config.Env}}", image)) or []
        (partial / META).write_text(json.dumps({"image": image, "id": image_id, "env": env}))
        shutil.rmtree(tree, ignore_errors=True)
        partial.rename(tree)
    for old in base.iterdir():
        if old != tree and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    for m in mount_points:
        (tree / m.lstrip("/")).mkdir(parents=True, exist_ok=True)
    meta = json.loads((tree / META).read_text())
    return ImageRoot(path=tree, image_id=meta["id"], env=tuple(meta["env"]))
