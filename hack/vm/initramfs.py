"""Build the initramfs of the vhostfs test guest.

The guest is the Debian cloud kernel installed on the host (``/boot/vmlinuz-*-cloud-amd64``)
plus an initramfs made of:

* ``/bin/busybox`` (busybox-static) and one symlink per applet in ``/bin``;
* ``/bin/vmtool``, our static C helper (``guest/vmtool.c``: xattrs with hex values, lstat
  records, the tree manifest, tty drain), compiled here with ``gcc -static``;
* ``/bin/posixfs``, the POSIX file-system conformance suite (``guest/posixfs/*.c``, see
  ``docs/posix-conformance.md``), compiled the same way;
* the kernel modules the tests need (:data:`MODULES`) and everything they depend on per
  ``modules.dep``, decompressed on the host when shipped as ``.ko.xz``/``.ko.zst`` because busybox
  insmod only takes plain ELF, listed in load order in ``/lib/modules/load-order``;
* ``/init`` (``init.sh``), which loads the modules and runs the per-boot script.

The base image is cached under ``<repo>/.cache/vm/`` keyed by the kernel release and a hash of
every input (this file, init.sh, vmtool.c, busybox, the module files), so repeated test runs
reuse it; any change to an input yields a new key.  Builds write to a temporary name and are
renamed into place, so concurrent test processes never see a half-written image.

Each boot appends a second, tiny cpio archive (:func:`boot_archive`) holding the test script and
its parameters: the kernel unpacks concatenated newc archives in order, so the base image never
has to be rebuilt per test.

Usable as a script: ``python hack/vm/initramfs.py`` builds (or finds) the base image and prints
the kernel and initramfs paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
REPO_ROOT: Final = HERE.parent.parent
CACHE_DIR: Final = REPO_ROOT / ".cache" / "vm"
INIT_SCRIPT: Final = HERE / "init.sh"
VMTOOL_SOURCE: Final = HERE / "guest" / "vmtool.c"
POSIXFS_DIR: Final = HERE / "guest" / "posixfs"

#: Modules the tests need in the guest; their dependencies are added from modules.dep.
#: virtio_pci is the transport of every virtio device (vhost-user-fs-pci, virtio-blk-pci).
MODULES: Final = ("virtio_pci", "virtiofs", "fuse", "erofs", "overlay", "virtio_blk")

SETUP_HINT: Final = "run hack/setup to install the VM test dependencies"


class SetupError(RuntimeError):
    """A host prerequisite (kernel, busybox, gcc) is missing; the message says what to do."""


@dataclasses.dataclass(frozen=True, slots=True)
class GuestImage:
    """A bootable kernel + base initramfs pair."""

    kernel: Path  # vmlinuz to pass to -kernel
    initramfs: Path  # cached base cpio (uncompressed newc)
    vmtool: Path  # the same static helper as in the guest, runnable on the host too
    posixfs: Path  # the guest's conformance suite binary, runnable on the host too
    release: str  # kernel release, e.g. 6.1.0-56-cloud-amd64


# ---- cpio (newc) writer ------------------------------------------------------------------


class CpioWriter:
    """Minimal SVR4 "newc" cpio writer, the format the kernel's initramfs unpacker reads.

    Entries carry fixed owner 0:0 and mtime 0 so the output depends only on the content.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ino = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        encoded = name.encode() + b"\0"
        fields = (
            self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0,
        )
        self._ino += 1
        self._buf += b"070701" + b"".join(b"%08x" % f for f in fields) + encoded
        self._pad()
        self._buf += data
        self._pad()

    def _pad(self) -> None:
        self._buf += b"\0" * (-len(self._buf) % 4)

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        """Append the trailer and return the archive."""
        self._entry("TRAILER!!!", 0)
        return bytes(self._buf)


def boot_archive(script: str, params: dict[str, str]) -> bytes:
    """The per-boot cpio: ``/vhostfs/script`` and ``/vhostfs/params`` (shell assignments).

    Appended after the base image; values in ``params`` must be shell-safe words.
    """
    for key, value in params.items():
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key) or not re.fullmatch(r"[\w.:/-]*", value):
            raise ValueError(f"unsafe guest parameter {key}={value!r}")
    cpio = CpioWriter()
    cpio.directory("vhostfs")
    cpio.file("vhostfs/script", script.encode(), 0o755)
    cpio.file("vhostfs/params", "".join(f"{k}={v}\n" for k, v in params.items()).encode())
    return cpio.finish()


# ---- host discovery ----------------------------------------------------------------------


def _release_key(release: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", release)]


def find_kernel() -> tuple[Path, str]:
    """The newest installed cloud kernel (``VHOSTFS_KERNEL`` overrides) and its release."""
    override = os.environ.get("VHOSTFS_KERNEL")
    if override:
        kernel = Path(override)
        release = kernel.name.removeprefix("vmlinuz-")
    else:
        found = sorted(
            Path("/boot").glob("vmlinuz-*-cloud-amd64"),
            key=lambda p: _release_key(p.name),
        )
        if not found:
            raise SetupError(f"no /boot/vmlinuz-*-cloud-amd64 kernel; {SETUP_HINT}")
        kernel = found[-1]
        release = kernel.name.removeprefix("vmlinuz-")
    if not kernel.is_file() or not Path("/lib/modules", release, "modules.dep").is_file():
        raise SetupError(f"kernel {kernel} or its /lib/modules/{release} is missing; {SETUP_HINT}")
    return kernel, release


def find_busybox() -> Path:
    """The static busybox binary (a dynamic one would need its libraries in the guest)."""
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if candidate.is_file():
            with candidate.open("rb") as f:
                head = f.read(1 << 20)
            # a dynamic ELF names its interpreter (PT_INTERP) near the start
            if b"/lib64/ld-linux" not in head:
                return candidate
    raise SetupError(f"no static busybox found (busybox-static); {SETUP_HINT}")


def module_closure(modules_dir: Path, wanted: Iterable[str]) -> list[str]:
    """Relative paths of ``wanted`` modules and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        by_name[_module_name(mod)] = mod
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        found = by_name.get(name.replace("-", "_"))
        if found is None:
            raise SetupError(f"kernel module {name} not found in {modules_dir}; {SETUP_HINT}")
        visit(found)
    return order


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base).replace("-", "_")


def read_module(path: Path) -> bytes:
    """Module bytes as plain ELF, decompressing .ko.xz / .ko.zst / .ko.gz on the host."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        import zstandard  # project dependency; only needed for zstd-compressed modules

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if path.name.endswith(".gz"):
        import gzip

        return gzip.decompress(data)
    return data


def compile_vmtool(out: Path) -> None:
    """Compile guest/vmtool.c statically (the guest has no libc)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SetupError(f"gcc not found; {SETUP_HINT}")
    cmd = [gcc, "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(VMTOOL_SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SetupError(
            f"compiling {VMTOOL_SOURCE} failed (static glibc is in libc6-dev; {SETUP_HINT}):\n"
            f"{proc.stderr}"
        )


def posixfs_sources() -> list[Path]:
    """The suite's sources and header, in a stable order (all are hashed into the cache key)."""
    return sorted([*POSIXFS_DIR.glob("*.c"), *POSIXFS_DIR.glob("*.h")])


def compile_posixfs(out: Path) -> None:
    """Compile guest/posixfs/*.c statically into one binary."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SetupError(f"gcc not found; {SETUP_HINT}")
    sources = [str(p) for p in posixfs_sources() if p.suffix == ".c"]
    cmd = [gcc, "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), *sources]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SetupError(
            f"compiling {POSIXFS_DIR} failed (static glibc is in libc6-dev; {SETUP_HINT}):\n"
            f"{proc.stderr}"
        )


# ---- the base image ----------------------------------------------------------------------


def _cache_key(release: str, busybox: Path, module_paths: list[Path]) -> str:
    h = hashlib.sha256()
    inputs = (Path(__file__).resolve(), INIT_SCRIPT, VMTOOL_SOURCE, *posixfs_sources(), busybox,
              *module_paths)
    for path in inputs:
        h.update(str(path).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return f"{release}-{h.hexdigest()[:16]}"


def _busybox_applets(busybox: Path) -> list[str]:
    proc = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    return [a for a in proc.stdout.split() if a and "/" not in a and a != "busybox"]


def _build(busybox: Path, modules_dir: Path, module_rel: list[str], vmtool: Path,
           posixfs: Path) -> bytes:
    cpio = CpioWriter()
    for d in ("bin", "dev", "proc", "sys", "run", "tmp", "mnt", "etc", "lib", "lib/modules"):
        cpio.directory(d)
    # the kernel opens /dev/console for PID 1 before /init can mount devtmpfs
    cpio.char_device("dev/console", 5, 1)
    cpio.char_device("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in _busybox_applets(busybox):
        cpio.symlink(f"bin/{applet}", "busybox")
    cpio.symlink("sbin", "bin")
    cpio.file("bin/vmtool", vmtool.read_bytes(), 0o755)
    cpio.file("bin/posixfs", posixfs.read_bytes(), 0o755)
    names = []
    for rel in module_rel:
        name = _module_name(rel)
        names.append(name)
        cpio.file(f"lib/modules/{name}.ko", read_module(modules_dir / rel))
    cpio.file("lib/modules/load-order", "".join(f"{n}\n" for n in names).encode())
    cpio.file("init", INIT_SCRIPT.read_bytes(), 0o755)
    return cpio.finish()


def build_base_image() -> GuestImage:
    """Return the cached guest image, building it first if no cache entry matches.

    Raises:
        SetupError: a host prerequisite is missing (the message points at hack/setup).
    """
    kernel, release = find_kernel()
    busybox = find_busybox()
    modules_dir = Path("/lib/modules", release)
    module_rel = module_closure(modules_dir, MODULES)
    key = _cache_key(release, busybox, [modules_dir / rel for rel in module_rel])
    target = CACHE_DIR / key / "initramfs.cpio"
    vmtool_target = target.with_name("vmtool")
    posixfs_target = target.with_name("posixfs")
    if not all(p.is_file() for p in (target, vmtool_target, posixfs_target)):
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            vmtool = Path(tmp, "vmtool")
            compile_vmtool(vmtool)
            posixfs = Path(tmp, "posixfs")
            compile_posixfs(posixfs)
            staged = Path(tmp, "initramfs.cpio")
            staged.write_bytes(_build(busybox, modules_dir, module_rel, vmtool, posixfs))
            os.replace(vmtool, vmtool_target)
            os.replace(posixfs, posixfs_target)
            os.replace(staged, target)
    return GuestImage(kernel=kernel, initramfs=target, release=release, vmtool=vmtool_target,
                      posixfs=posixfs_target)


def main() -> int:
    try:
        image = build_base_image()
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"kernel    {image.kernel}\ninitramfs {image.initramfs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
