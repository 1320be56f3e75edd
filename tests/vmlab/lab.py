"""The lab: Debian's stock kernel booted under QEMU (TCG), built on demand.

Nothing here is committed as a binary: the kernel package is fetched with
apt-get and unpacked into a cache outside the repository (VTRACE_LAB_CACHE,
default /var/tmp/vtrace-lab); the initramfs is a busybox one written here,
per test, from an init script the test supplies. The measured facts it relies
on (boot times, TCG thread=single, the CPU arrangement) are in docs/live.md.

Pass/fail always comes from markers the guest prints on its serial console,
never from QEMU's exit status (QEMU exits 0 when the guest powers off,
whatever happened inside).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import lzma
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("VTRACE_LAB_CACHE", "/var/tmp/vtrace-lab"))
QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"


class LabError(RuntimeError):
    """The lab could not be built or run (the message says which step)."""


def _run(cmd: list[str], *, cwd: Path | None = None, timeout: int = 600) -> str:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"{cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(cmd)} took more than {timeout} s") from None
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise LabError(f"{' '.join(cmd)} failed ({p.returncode}): {' | '.join(tail)}")
    return p.stdout


@dataclass(frozen=True)
class Kernel:
    release: str  # e.g. 6.1.0-56-amd64
    root: Path    # the unpacked package

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release / "kernel"

    def builtin(self, name: str) -> bool:
        """Built into this kernel (modules.builtin): nothing to load (6.12: virtio_pci)."""
        f = self.modules.parent / "modules.builtin"
        want = name.replace("-", "_")
        return f.exists() and any(ln.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_") == want
                                  for ln in f.read_text().split())

    def module(self, name: str) -> Path:
        want = name.replace("-", "_")
        hits = [p for p in self.modules.rglob("*.ko*") if p.name.split(".ko")[0].replace("-", "_") == want]
        if not hits:
            raise LabError(f"module {name} is not in {self.root.name}")
        return hits[0]

    def module_bytes(self, name: str) -> bytes:
        """The module as insmod takes it: Debian compresses them with xz from 6.x on."""
        p = self.module(name)
        return lzma.decompress(p.read_bytes()) if p.name.endswith(".xz") else p.read_bytes()

    def depends(self, name: str) -> list[str]:
        """The module's `depends=` from its .modinfo (no kmod needed)."""
        data = self.module_bytes(name)
        i = data.find(b"\0depends=")
        if i < 0:
            return []
        val = data[i + 9:data.index(b"\0", i + 1)].decode()
        return [d for d in val.split(",") if d]

    def closure(self, names: list[str]) -> list[str]:
        """Modules in load order: each after everything it depends on."""
        order: list[str] = []

        def visit(n: str) -> None:
            if n in order or self.builtin(n):
                return
            for d in self.depends(n):
                visit(d)
            order.append(n)
        for n in names:
            visit(n)
        return order


def _suite_apt(suite: str) -> list[str]:
    """apt options for one more suite of the machine's Debian mirror, with its
    own package lists under CACHE: the machine's sources stay as they are, and
    apt still checks the suite's signature against the system's keyring."""
    d = CACHE / f"apt-{suite}"
    (d / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (d / "sources.list").write_text(f"deb {MIRROR} {suite} main\n")
    return ["-o", f"Dir::Etc::SourceList={d / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={d / 'lists'}", "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache="]


MIRROR = os.environ.get("VTRACE_LAB_MIRROR", "http://deb.debian.org/debian")
# Debian 12's newer kernel (6.12 when this was written): vDPA (vhost_vdpa, VDUSE),
# virtio admin commands, 6.x vhost workers; 6.1 is built without vDPA.
BACKPORTS = "bookworm-backports"


def _depends(pkg: str, opts: list[str] = ()) -> list[str]:
    """The packages ``pkg`` depends on (apt-cache depends)."""
    out = _run(["apt-cache", *opts, "depends", pkg])
    return [ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.strip().startswith("Depends:")]


@contextlib.contextmanager
def _fetching():
    """One fetch into CACHE at a time across processes (labs run in parallel
    workers): apt's index updates and the shared download folder are not safe
    to share."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _fetch_debs(pkgs: list[str], root: Path, opts: list[str] = (), fix=None) -> None:
    """apt-get download ``pkgs`` (``opts``: another suite's lists) and unpack them
    all into ``root``, through root.partial so an interrupted fetch leaves no
    half tree; ``fix(tree)`` may edit the tree before it takes root's place."""
    CACHE.mkdir(parents=True, exist_ok=True)
    dl = CACHE / "download"
    shutil.rmtree(dl, ignore_errors=True)
    dl.mkdir()
    try:
        _run(["apt-get", *opts, "download", *pkgs], cwd=dl)
    except LabError:
        _run(["apt-get", *opts, "update", "-qq"])  # a stale index names a version the mirror dropped
        _run(["apt-get", *opts, "download", *pkgs], cwd=dl)
    missing = [p for p in pkgs if not list(dl.glob(f"{p}_*.deb"))]
    if missing:
        raise LabError(f"apt-get download {' '.join(missing)} left no .deb")
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for deb in sorted(dl.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(tmp)])
    if fix is not None:
        fix(tmp)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    shutil.rmtree(dl, ignore_errors=True)


def stock_kernel(suite: str | None = None) -> Kernel:
    """The Debian stock kernel, resolved through linux-image-amd64: the
    machine's own suites', or ``suite``'s (e.g. BACKPORTS)."""
    with _fetching():
        return _stock_kernel(suite)


def _stock_kernel(suite: str | None) -> Kernel:
    opts = _suite_apt(suite) if suite else []

    def resolve() -> list[str]:
        try:
            return [p for p in _depends("linux-image-amd64", opts) if p.startswith("linux-image-")]
        except LabError:
            return []
    pkgs = resolve()
    if not pkgs:
        _run(["apt-get", *opts, "update", "-qq"])  # a fresh machine may have no package index yet
        pkgs = resolve()
    if not pkgs:
        raise LabError(f"apt-cache cannot resolve linux-image-amd64{f' in {suite}' if suite else ''} "
                       "even after apt-get update")
    pkg = pkgs[0]
    release = pkg[len("linux-image-"):]
    root = CACHE / pkg
    if (root / "boot" / f"vmlinuz-{release}").exists():
        return Kernel(release, root)
    _fetch_debs([pkg], root, opts)
    return Kernel(release, root)


def kernel_headers(kernel: Kernel) -> Path:
    """The kernel's Debian headers (linux-headers-<release>, its -common part and
    linux-kbuild), unpacked under CACHE, never installed: the host-root guest
    shares this machine's / and must not find a /lib/modules/<release> there.
    Returns the directory to build modules against (make -C)."""
    with _fetching():
        return _kernel_headers(kernel)


def _kernel_headers(kernel: Kernel) -> Path:
    root = CACHE / f"linux-headers-{kernel.release}"
    build = root / "usr" / "src" / f"linux-headers-{kernel.release}"
    if (build / "Makefile").exists():
        return build
    pkg = f"linux-headers-{kernel.release}"
    pkgs = [pkg] + [d for d in _depends(pkg) if d.startswith(("linux-headers-", "linux-kbuild-"))]

    def fix(tree: Path) -> None:
        # its Makefile includes the -common part by absolute path; the kbuild
        # scripts are relative links (../../lib/linux-kbuild-*), which hold here
        mk = tree / "usr" / "src" / f"linux-headers-{kernel.release}" / "Makefile"
        if not mk.exists():
            raise LabError(f"{pkg} has no Makefile (packages: {', '.join(pkgs)})")
        mk.write_text(mk.read_text().replace("/usr/src/", f"{root}/usr/src/"))
    _fetch_debs(pkgs, root, fix=fix)
    return build


def build_module(kernel: Kernel, src: Path, dest: Path) -> Path:
    """Build the out-of-tree module in ``src`` (a Kbuild file, one .c) for the lab
    kernel, in a copy under ``dest``; returns the .ko."""
    work = dest / src.name
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)
    out = _run(["make", "-C", str(kernel_headers(kernel)), f"M={work}", "modules"], timeout=300)
    kos = list(work.glob("*.ko"))
    if len(kos) != 1:
        raise LabError(f"building {src.name} left {len(kos)} .ko files: {out.strip()[-300:]}")
    return kos[0]


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive (what the kernel unpacks as an initramfs)."""
    out = io.BytesIO()

    def pad4() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], start=1):
        nb = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + nb)
        pad4()
        out.write(data)
        pad4()
    return out.getvalue()


def initramfs(kernel: Kernel, modules: list[str], init: str, dest: Path,
              files: tuple[tuple[str, bytes, int], ...] = ()) -> list[str]:
    """Write a busybox initramfs whose /init is ``init``; returns the module load order.

    The modules land in /lib/modules as plain files; /init loads them with
    insmod in the returned order (no depmod or modprobe needed). ``files``:
    more (path, content, mode) entries.
    """
    if not os.path.exists(BUSYBOX):
        raise LabError(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    d, f, x = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFREG | 0o755
    entries: list[tuple[str, int, bytes]] = [
        (n, d, b"") for n in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules")]
    entries.append(("bin/busybox", x, Path(BUSYBOX).read_bytes()))
    entries.append(("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
    order = kernel.closure(modules)
    for m in order:
        entries.append((f"lib/modules/{m}.ko", f, kernel.module_bytes(m)))
    entries.append(("init", x, init.encode()))
    entries += [(name, stat.S_IFREG | mode, data) for name, data, mode in files]
    dest.write_bytes(gzip.compress(_cpio_newc(entries), compresslevel=1))
    return order


INIT_PROLOGUE = """#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
# a hang's evidence: the NMI lab.boot sends at its timeout panics the guest, which
# then prints every CPU's backtrace and replays its whole log at every level
echo 1 > /proc/sys/kernel/unknown_nmi_panic
echo 96 > /proc/sys/kernel/panic_print
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
"""


@dataclass
class Run:
    console: str
    seconds: float

    def marker(self, name: str) -> str | None:
        """The rest of the line after 'name ' on the console, if the guest printed it."""
        for ln in self.console.splitlines():
            i = ln.find(name)  # firmware escape codes may precede it on the line
            if i >= 0 and ln[i + len(name):i + len(name) + 1] in ("", " ", "\r"):
                return ln[i + len(name):].strip()
        return None


# One host thread runs every vCPU. With a thread per vCPU (MTTCG, QEMU's default),
# QEMU 7.2 can keep executing an int3 that another vCPU has already patched
# out of the kernel's text (a "ghost int3"; measured in the lab: memory at the
# site held the new `call`, the vCPU took the int3 there again and again).
# Attaching any function probe patches text that way (ftrace's text_poke_bp),
# and 6.1's int3 handler re-executes an int3 it cannot place, so the vCPU
# looped with interrupts off, holding whatever lock it held: the lab's hangs.
# 6.3+ oopses instead. Real CPUs (and KVM) serialise on the handler's iret.
TCG = os.environ.get("VTRACE_LAB_TCG", "tcg,thread=single")


def boot(kernel: Kernel, initrd: Path, extra: list[str], *, mem_mb: int = 512, timeout: int = 180,
         append: str = "") -> Run:
    """Boot under TCG; the guest powers off (or panics) to end the run. The
    console goes to console.txt beside the initramfs as it is written."""
    if shutil.which(QEMU) is None:
        raise LabError(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    with tempfile.TemporaryDirectory(prefix="vtrace-lab-") as tmp:
        mon = Path(tmp) / "monitor"  # a short path: unix socket names are limited to 108 bytes
        cmd = [QEMU, "-accel", TCG, "-machine", "q35", "-m", str(mem_mb), "-nographic", "-no-reboot",
               "-nodefaults", "-serial", "stdio", "-monitor", f"unix:{mon},server=on,wait=off",
               "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
               "-append", f"console=ttyS0 panic=-1 quiet {append}".strip(), *extra]
        saved = initrd.with_name("console.txt")
        t0 = time.monotonic()
        with open(saved, "w+", errors="replace") as con:
            p = subprocess.Popen(cmd, stdout=con, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                 errors="replace")
            try:
                _, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                sent = _nmi(mon)
                try:
                    p.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
                con.seek(0)
                console = con.read()
                nmi = ("no NMI could be sent" if not sent else "NMI sent, the guest panicked"
                       if "Kernel panic" in console else "NMI sent, the guest did not panic")
                raise LabError(f"guest did not power off within {timeout} s (console: {saved}; {nmi}); "
                               f"{hang_report(console)}") from None
            con.seek(0)
            console = con.read()
    if p.returncode != 0:
        raise LabError(f"qemu failed ({p.returncode}): {err.strip()[-300:]}")
    return Run(console, time.monotonic() - t0)


def _nmi(monitor: Path) -> bool:
    """Inject an NMI into every vCPU through QEMU's monitor. The guest's init set
    unknown_nmi_panic, so even a CPU spinning with interrupts off panics, and
    panic_print makes the panic show every CPU's stack and the whole log."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(monitor))
            s.sendall(b"nmi\n")
            time.sleep(1)  # let the monitor take the command before the socket closes
        return True
    except OSError:
        return False


# Where a report about a stuck CPU or task begins, and what else in it is worth keeping.
_HANG_HEADS = ("blocked for more than", "rcu: INFO", "NMI backtrace", "Kernel panic")
_HANG_LINES = ("detected by", "RIP: 00", "CPU: ", "task:", "Call Trace", "<NMI>", "<IRQ>", "<TASK>")
# a stack frame, or an RCU stall's line for one CPU ("rcu: \t1-...0: (1 GPs behind) ...")
_FRAME = re.compile(r"^\s*(\? )?[\w.]+\+0x[0-9a-f]+/0x[0-9a-f]+|^rcu:\s+\d+-\.\.\.")


def hang_report(console: str, limit: int = 200) -> str:
    """What a hung guest's console says about where it hung, on one line for the
    test report (the whole console stays in console.txt): each stall, hung-task,
    NMI-backtrace and panic report with its CPU headers and stack frames, once
    (a report repeated with only its numbers changed, or replayed by panic_print,
    is kept the first time)."""
    reports: list[list[str]] = []
    for ln in console.splitlines():
        ln = re.sub(r"^\[\s*\d+\.\d+\]\s?", "", ln.rstrip()).strip()
        if any(h in ln for h in _HANG_HEADS):
            reports.append([ln])
        elif reports and (_FRAME.match(ln) or any(k in ln for k in _HANG_LINES)):
            reports[-1].append(ln)
    seen: set[str] = set()
    keep: list[str] = []
    for r in reports:
        key = re.sub(r"\d+", "#", "\n".join(r))
        if key not in seen:
            seen.add(key)
            keep += r
    if not keep:
        return "console tail: " + " | ".join(console.strip().splitlines()[-5:])
    more = f" | ... {len(keep) - limit} more lines in console.txt" if len(keep) > limit else ""
    return "hang report: " + " | ".join(keep[:limit]) + more


# The host-root guest: the lab's stock kernel with this machine's own Debian
# userland (python3, python3-bpfcc, the project and its venv), shared read-only
# over 9p under a tmpfs overlay, so the guest runs vtrace exactly as installed
# here with nothing to build. The kernel's modules and config come from the
# unpacked package (linked into the overlay), so bcc finds /boot/config-<release>
# for its header tree. A second, writable 9p share (/out) carries results back.
HOST_ROOT_MODULES = ["9pnet_virtio", "9p", "virtio_pci", "overlay"]
HOST_ROOT_INIT = """
mkdir -p /host /rw /new
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro,cache=loose host /host || echo VTRACE-LAB-FAIL 9p root
mount -t tmpfs -o size=768m tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /new || echo VTRACE-LAB-FAIL overlay
mount -t proc proc /new/proc; mount -t sysfs sys /new/sys; mount -t devtmpfs dev /new/dev
# /tmp stays the overlay's: the project may be checked out under it (CI clones)
mkdir -p /new/out && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out /new/out \
  || echo VTRACE-LAB-FAIL 9p out
K=/new$(cat /kroot)
cp $K/boot/config-$(uname -r) /new/boot/
mkdir -p /new/lib/modules && ln -sfn $(cat /kroot)/lib/modules/$(uname -r) /new/lib/modules/$(uname -r)
echo VTRACE-LAB-ROOT up
exec chroot /new /bin/sh -c "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; \
  mount -t tracefs nodev /sys/kernel/tracing; mount -t debugfs nodev /sys/kernel/debug; \
  mount -t bpf bpf /sys/fs/bpf; cd $(cat /cwd); /bin/sh /out/run.sh; echo VTRACE-LAB-EXIT \\$?; \
  /bin/busybox poweroff -f"
"""


def host_root_initramfs(kernel: Kernel, modules: list[str], cwd: str, dest: Path) -> list[str]:
    """An initramfs that loads ``modules`` (plus 9p/overlay), builds the host-root
    guest and runs /out/run.sh from ``cwd``."""
    mods = HOST_ROOT_MODULES + [m for m in modules if m not in HOST_ROOT_MODULES]
    loads = "".join(f"insmod /lib/modules/{m}.ko || echo VTRACE-LAB-FAIL insmod {m}\n" for m in kernel.closure(mods))
    init = INIT_PROLOGUE + f"echo {kernel.root} > /kroot\necho {cwd} > /cwd\n" + loads + HOST_ROOT_INIT
    return initramfs(kernel, mods, init, dest)


# The host-root guest's CPU: `max` for numpy's baseline (qemu64 lacks it), without
# AVX/AVX2. QEMU 7.2's TCG, the first with AVX2, gets numpy's vectorised 64-bit
# sort wrong (measured in the guest, 300 sorts and 300 argsorts of random keys
# per type: 76 of 600 out of order for uint64, 167 int64, 104 float64, 0 uint32;
# none with AVX and AVX2 off), and vtrace's aggregator sorts kernel pointers.
LAB_CPU = "max,avx=off,avx2=off"


def boot_host_root(kernel: Kernel, initrd: Path, out: Path, script: str, extra: list[str] = (), *,
                   timeout: int = 600, append: str = "", cpus: int = 2) -> Run:
    """Run ``script`` (sh) in the host-root guest; ``out`` is its /out. `-cpu max`:
    numpy needs more than qemu64's instruction set."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.sh").write_text(script)
    run = boot(kernel, initrd, ["-smp", str(cpus), "-cpu", LAB_CPU,
                                "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
                                "-virtfs", f"local,path={out},mount_tag=out,security_model=none", *extra],
               mem_mb=2048, timeout=timeout, append=f"ipv6.disable=1 {append}".strip())
    bad = [ln.split("VTRACE-LAB-FAIL", 1)[1].strip() for ln in run.console.splitlines() if "VTRACE-LAB-FAIL" in ln]
    if bad or run.marker("VTRACE-LAB-ROOT") is None:
        raise LabError(f"the host-root guest did not come up ({'; '.join(bad) or 'no root'}); "
                       f"console tail: {' | '.join(run.console.strip().splitlines()[-5:])}")
    return run


PROJECT = Path(__file__).resolve().parents[2]


def run_host_root(workdir: Path, modules: list[str], script: str, extra: list[str] = (), *,
                  append: str = "", timeout: int = 600, kernel: Kernel | None = None,
                  files: tuple[Path, ...] = (), cpus: int = 2) -> tuple[Path, Run]:
    """The whole lab run: the stock kernel, an initramfs loading ``modules``
    in ``workdir``, ``files`` copied into /out, ``script`` run from the project
    root; returns (/out, run). A guest that hangs fails the test, with its
    hang report (boot: the NMI, the stacks): nothing boots it again. The
    timeout is generous (a run takes 1.5 to 4 minutes, two boot at once in
    `make test`): it only decides how long a hang takes to fail."""
    k = kernel or stock_kernel()
    workdir.mkdir(parents=True, exist_ok=True)
    host_root_initramfs(k, modules, str(PROJECT), workdir / "initrd.gz")
    out = workdir / "out"
    out.mkdir(exist_ok=True)
    for f in files:
        shutil.copy(f, out / Path(f).name)
    return out, boot_host_root(k, workdir / "initrd.gz", out, script, extra, append=append, timeout=timeout,
                               cpus=cpus)


def probe_table(out: Path, phase: str) -> dict[str, dict]:
    """The points as the phase's capture last described them (what `vtrace probes
    -j` prints: layer, point, strategy, attached, error, missed, uncounted), by
    point name, or ``layer:point`` for a name more than one layer's catalogue
    has (release), whichever programs the capture loaded.
    The capture records them with its first batch and again whenever a point's
    skipped runs grew; a second `vtrace probes` run per phase cost the lab about
    20 s of TCG each time for the same table."""
    from vtrace.capture import CaptureReader
    from vtrace.live.programs import CATALOGUE
    names = [p.name for p in CATALOGUE]
    last = None
    for b in CaptureReader(str(out / f"{phase}.vtrace")).batches():
        if b.probes is not None:
            last = {(p.point if names.count(p.point) == 1 else f"{p.layer}:{p.point}"): dict(p.__dict__)
                    for p in b.probes}
    assert last is not None, f"the {phase} capture holds no probe table"
    return last


def capture_events(path: Path) -> tuple[np.ndarray, dict]:
    """A capture's events in time order, and every object it names, by obj."""
    from vtrace.capture import CaptureReader
    evs, objs = [], {}
    for b in CaptureReader(str(path)).batches():
        evs.append(b.events)
        objs.update({o.obj: o for o in b.objects})
    ev = np.concatenate(evs)
    return ev[np.argsort(ev["ts"], kind="stable")], objs


def vm_queues(capture: Path, pid: int, names) -> dict[str, np.ndarray]:
    """The vhost queues of the VMM ``pid`` (exactly ``names``): their events, by queue name."""
    from vtrace.events import Layer
    ev, objs = capture_events(capture)
    vm = f"python-{pid}"
    mine = {o.obj: o.name for o in objs.values() if o.layer == Layer.VHOST and o.vm == vm}
    assert sorted(mine.values()) == sorted(names), (vm, [(o.vm, o.device, o.name) for o in objs.values()])
    return {name: ev[ev["obj"] == obj] for obj, name in mine.items()}


# Both ways a function point attaches, each proven on the same traffic in one
# boot: the default (fentry/fexit first) and kprobes only (VTRACE_STRATEGIES).
STRATEGY_PHASES = {"fentry": "", "kprobe": "kprobe,tracepoint,raw_tracepoint"}


def selected_phases() -> dict[str, str]:
    """STRATEGY_PHASES, or only those VTRACE_LAB_PHASES names (e.g. kprobe): one
    strategy's tests alone, in a shorter boot."""
    want = [w for w in os.environ.get("VTRACE_LAB_PHASES", "").split(",") if w]
    unknown = set(want) - set(STRATEGY_PHASES)
    if unknown:
        raise LabError(f"VTRACE_LAB_PHASES: unknown phase {', '.join(sorted(unknown))} "
                       f"(known: {', '.join(STRATEGY_PHASES)})")
    return {k: v for k, v in STRATEGY_PHASES.items() if not want or k in want}


def capture_phases(python: str, workload: str, *, before: str = "", during: str = "", after: str = "",
                   phases: dict[str, str] = STRATEGY_PHASES) -> str:
    """sh for boot_host_root: per STRATEGY_PHASES entry ($1 its name), ``before``,
    a live capture to /out/$1.vtrace (its probe table: probe_table) around
    ``workload`` (stderr /out/$1.work.err, marker VTRACE-WORK-$1), ``during``, the
    capture's SIGTERM (marker VTRACE-CAPTURE-$1), ``after``. The workload starts
    once the capture says it is tracing (marker VTRACE-READY-$1: how long that
    took, in ms), and not at all if it never does. The capture is written to the
    guest's own /tmp and copied to /out after: written over 9p as it runs, every
    write ran the guest's kprobes on the 9p queue, and a kprobe that fires while
    another's handler runs on that CPU (an interrupt meanwhile) is skipped by the
    kernel, uncounted where vtrace can read (docs/live.md, CAVEATS). ``phases``:
    a subset of STRATEGY_PHASES where one strategy is proof enough."""
    return f"""
phase() {{
  export VTRACE_STRATEGIES=$2
  {before}
  {python} -m vtrace.cli capture --source live -f -o /tmp/$1.vtrace 2>/out/$1.capture.err &
  cap=$!
  t0=$(date +%s%N)
  while ! grep -q "Hit Ctrl-C" /out/$1.capture.err && kill -0 $cap 2>/dev/null; do sleep 0.1; done
  echo VTRACE-READY-$1 $(( ($(date +%s%N) - t0) / 1000000 ))
  if grep -q "Hit Ctrl-C" /out/$1.capture.err; then
    {workload} 2>/out/$1.work.err; echo VTRACE-WORK-$1 $?
    {during}
  fi
  kill -TERM $cap; wait $cap; echo VTRACE-CAPTURE-$1 $?
  cp /tmp/$1.vtrace /out/
  {after}
}}
""" + "".join(f"phase {name} '{kinds}'\n" for name, kinds in phases.items())


def check_phase(run: Run, out: Path, phase: str, work: str) -> None:
    """The phase's workload (named ``work`` in the message) and capture both exited 0."""
    def tail(f: str) -> str:
        p = out / f"{phase}.{f}"
        return p.read_text().strip()[-800:] if p.exists() else "(missing)"
    assert run.marker(f"VTRACE-READY-{phase}") is not None and run.marker(f"VTRACE-WORK-{phase}") is not None, \
        f"the capture never announced it was tracing: {tail('capture.err')}"
    assert run.marker(f"VTRACE-WORK-{phase}") == "0", \
        f"{work} failed: {tail('work.err')}; console: {run.console[-800:]}"
    assert run.marker(f"VTRACE-CAPTURE-{phase}") == "0", f"capture failed: {tail('capture.err')}"
