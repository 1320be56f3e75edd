"""The realvm lab: real QEMU/KVM guests, nested in the stock-kernel lab, traced
by vtrace on the lab host (KERNEL-NOTES: the lab's TCG CPU offers SVM, so
kvm_amd loads and Debian's QEMU from the shared root runs KVM guests).

Two VMs at once, as libvirt would start them (``-name guest=NAME,debug-threads=on``,
and the bare ``-name NAME`` form):
- web1: 1 vCPU, a virtio-net NIC on tap0 through vhost-net, a vhost-vsock device;
- db1: a two-queue-pair virtio-net NIC on tap1 (vhost-net), and a virtio-blk
  disk that QEMU itself serves (vtrace sees it only through KVM). Halfway
  through its traffic it is saved and restored across processes: `stop`,
  `migrate` to a file and `quit` through its monitor, then a new QEMU with
  `-incoming` from that file runs on (its queues go on from the saved bases).

Each guest is a busybox initramfs running known traffic with counts the test
draws at random: pings to its tap's address (one at a time: ``ping -A``),
vsock messages echoed by the lab host (tests/vmlab/vsock_listen.py), O_DIRECT
disk reads. No frame but those: both ends have static neighbour entries and
IPv6 is off, so each ping is one frame each way. At the end each guest prints
its own counters (ETHTOOL_GSTATS per queue, /proc/interrupts, the disk's
stat) on its serial console, the oracle vtrace is held to.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.vmlab import lab

HERE = Path(__file__).resolve().parent
HOST_MODULES = ["kvm", "kvm_amd", "tun", "vhost_net", "vhost_vsock"]
GUEST_MODULES = ["virtio_pci", "virtio_net", "virtio_blk", "vmw_vsock_virtio_transport"]
VSOCK_PORT = 5000
DISK_BLOCK = 4096
# One lab CPU. The lab's QEMU runs every vCPU on one host thread (lab.TCG), and
# there a nested guest on one lab vCPU made no progress while the other lab
# vCPU was busy (measured: two nested guests, or one beside vtrace, still not
# booted after 300 s; the same guest alone 26 s; both on one lab CPU 150 s).
LAB_CPUS = 1
# What a KVM host's operator runs: the host-side programs only (the lab host is
# itself a virtio guest, whose 9p root the guest-side programs would trace too)
SOURCE = "live:vhost,kvm"
PAUSE_S = 3  # how long the vsock VM stays stopped (QEMU monitor stop ... cont)
EVICT_S = 1.0  # an eviction window shorter than that stop (test_realvm: a stopped VM is never forgotten)


@dataclass
class VM:
    name: str
    net: int             # its tap: tap<net>, 10.0.<net+1>.0/24, host .1, guest .2
    cpus: int = 1
    queues: int = 1      # queue pairs of its NIC
    cid: int = 0         # vhost-vsock guest CID (0: none)
    disk: bool = False
    name_form: str = "guest={},debug-threads=on"
    # the traffic, drawn per run
    pings: list[int] = field(default_factory=list)  # per queue pair: ping -A from CPU k
    vsock_msgs: int = 0
    vsock_size: int = 0
    reads: int = 0
    migrate: bool = False  # saved to a file after its first ping round, restored in a new QEMU

    @property
    def tap(self) -> str:
        return f"tap{self.net}"

    def mac(self, host: bool) -> str:
        return f"52:54:00:00:{self.net + 1:02x}:{1 if host else 2:02x}"

    def ip(self, host: bool) -> str:
        return f"10.0.{self.net + 1}.{1 if host else 2}"


def draw(rng: random.Random) -> list[VM]:
    """The two VMs with this run's traffic."""
    web1 = VM("web1", 0, cid=3, pings=[rng.randint(15, 40)], vsock_msgs=rng.randint(8, 24),
              vsock_size=rng.randint(64, 3000))
    db1 = VM("db1", 1, queues=2, disk=True, name_form="{}",
             pings=[rng.randint(10, 30), rng.randint(10, 30)], reads=rng.randint(20, 60), migrate=True)
    return [web1, db1]


def guest_tool(dest: Path) -> Path:
    """tests/vmlab/realvm_guest.c, built static for the busybox guests."""
    out = dest / "realvm_guest"
    subprocess.run([shutil.which("gcc") or "gcc-12", "-static", "-O2", "-Wall", "-Werror", "-o", str(out), str(HERE / "realvm_guest.c")],
                   check=True, capture_output=True, text=True)
    return out


# the NIC's statistics (per queue where ethtool has them: 6.1; 6.12 moved them to
# netlink's qstats) and its totals from sysfs, as sys_rx_packets / sys_tx_packets;
# the virtio lines of /proc/interrupts. Only those: every character on the
# serial console is a port write, so a VM exit, a kvm_pio and a kvm_set_irq
# for vtrace (the whole of /proc/interrupts was 2.5k events/s while it printed)
COUNTERS = ("echo REALVM-NIC-{tag}-BEGIN; /bin/realvm_guest nicstats eth0 | grep -e packets -e kicks; "
            "for d in rx tx; do echo sys_${{d}}_packets $(cat /sys/class/net/eth0/statistics/${{d}}_packets); done; "
            "echo REALVM-NIC-{tag}-END; "
            "echo REALVM-IRQ-{tag}-BEGIN; head -1 /proc/interrupts; grep virtio /proc/interrupts; "
            "echo REALVM-IRQ-{tag}-END")


def guest_init(vm: VM) -> str:
    """The nested guest's /init: the NIC up with a static neighbour (no ARP),
    its counters, then it waits for the host's go on its second serial port
    (vtrace attaches meanwhile: under TCG a traced boot crawls), the traffic,
    its counters again, power off."""
    work = []
    for k, n in enumerate(vm.pings):
        if vm.queues > 1:  # this pair's TX queue takes every packet (XPS: the CPU mask per queue)
            work += [f"echo {1 if q == k else 0} > /sys/class/net/eth0/queues/tx-{q}/xps_cpus"
                     for q in range(vm.queues)]
        work.append(f"ping -A -q -c {n} {vm.ip(True)} >/dev/null || echo REALVM-FAIL ping{k}")
        if vm.migrate and k == 0:  # the host saves it and restores it in a new QEMU, then says go again
            work += ["echo REALVM-MIGRATE", "read -r go < /dev/ttyS1", "echo REALVM-MIGRATED"]
    if vm.cid:
        work.append(f"/bin/realvm_guest vsock 2 {VSOCK_PORT} {vm.vsock_msgs} {vm.vsock_size} "
                    f"| sed 's/^/REALVM-VSOCK /' || echo REALVM-FAIL vsock")
    if vm.disk:
        work.append(f"dd if=/dev/vda of=/dev/null bs={DISK_BLOCK} count={vm.reads} iflag=direct 2>/dev/null "
                    "|| echo REALVM-FAIL dd")
    mq = [f"/bin/realvm_guest channels eth0 {vm.queues} || echo REALVM-FAIL channels"] if vm.queues > 1 else []
    disk = "; echo REALVM-DISK-{tag} $(cat /sys/block/vda/stat)" if vm.disk else ""
    return lab.INIT_PROLOGUE + "\n".join([
        "for m in $(cat /modules); do insmod /lib/modules/$m.ko || echo REALVM-FAIL insmod $m; done",
        *mq,
        "ip link set lo up; ip link set eth0 up",
        f"ip addr add {vm.ip(False)}/24 dev eth0",
        f"arp -s {vm.ip(True)} {vm.mac(True)} || echo REALVM-FAIL arp",
        (COUNTERS + disk).format(tag="BEFORE"),
        "echo REALVM-WAIT",
        "read -r go < /dev/ttyS1",
        "echo REALVM-GO",
        *work,
        # the last TX buffer comes back (and is counted by the driver) on the next interrupt
        "sleep 1",
        (COUNTERS + disk).format(tag="AFTER"),
        "echo REALVM-DONE",
        "poweroff -f",
    ]) + "\n"


def guest_initramfs(kernel: lab.Kernel, vm: VM, tool: Path, dest: Path) -> None:
    """A busybox initramfs for ``vm`` with the guest tool and the modules its
    /init loads (in dependency order, from /modules)."""
    order = kernel.closure(GUEST_MODULES)
    lab.initramfs(kernel, GUEST_MODULES, guest_init(vm), dest,
                  files=(("bin/realvm_guest", tool.read_bytes(), 0o755), ("modules", " ".join(order).encode(), 0o644)))


def qemu_command(kernel: lab.Kernel, vm: VM, out: str, incoming: str = "") -> str:
    """The VMM as a libvirt host would run it (sh words). ``incoming``: the
    migration it is started to receive (its console then goes to NAME-in.console)."""
    console = f"{out}/{vm.name}{'-in' if incoming else ''}.console"
    args = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", str(vm.cpus),
            "-nodefaults", "-nographic", "-no-reboot", "-serial", f"file:{console}",
            "-name", vm.name_form.format(vm.name), "-monitor", f"unix:/tmp/{vm.name}.mon,server=on,wait=off",
            # the host's go (guest_init): the guest's ttyS1
            "-chardev", f"socket,id=go,path=/tmp/{vm.name}.go,server=on,wait=off", "-device", "isa-serial,chardev=go",
            "-kernel", str(kernel.vmlinuz), "-initrd", f"{out}/{vm.name}.gz",
            "-append", "'console=ttyS0 panic=-1 quiet ipv6.disable=1'",
            "-netdev", f"tap,id=n0,ifname={vm.tap},script=no,downscript=no,vhost=on"
            + (f",queues={vm.queues}" if vm.queues > 1 else ""),
            "-device", f"virtio-net-pci,netdev=n0,mac={vm.mac(False)},romfile="
            + (f",mq=on,vectors={2 * vm.queues + 2}" if vm.queues > 1 else "")
            # a restored guest would send gratuitous ARPs (frames the test did not draw);
            # QEMU's own RARPs go to the tap, counted there (rarp_count.py). Turning
            # the self-announce off (migration.announce-rounds=0) made QEMU 7.2's
            # restored process segfault at exit, measured with and without vtrace.
            + (",guest_announce=off" if vm.migrate else "")]
    if vm.cid:
        args += ["-device", f"vhost-vsock-pci,guest-cid={vm.cid}"]
    if vm.disk:
        args += ["-drive", f"file=/tmp/{vm.name}.img,if=none,id=d0,format=raw",
                 "-device", "virtio-blk-pci,drive=d0"]
    if incoming:
        args += ["-incoming", f"'{incoming}'"]
    return " ".join(args)


def go(vm: VM) -> str:
    """sh: the host's go, a line on the guest's second serial port."""
    return (f"{sys.executable} -c \"import socket; s = socket.socket(socket.AF_UNIX); "
            f"s.connect('/tmp/{vm.name}.go'); s.sendall(b'go\\n')\"")


def migration(kernel: lab.Kernel, vm: VM, i: int) -> list[str]:
    """sh: once the guest asks for it, save ``vm`` (QEMU $q<i>) to a file through
    its monitor (stop, migrate, quit) and restore it in a new QEMU (-incoming),
    which becomes $q<i>, and continue it; then the go again. Markers: REALVM-MIGRATE-SOURCE (the
    old QEMU's exit status), REALVM-MIGRATE-RESTORED (seconds to the restore)."""
    state = f"/tmp/{vm.name}.mig"
    return [
        "t2=$(date +%s)",
        f"{sys.executable} tests/vmlab/rarp_count.py {vm.tap} /out/{vm.name}.rarp.json /tmp/{vm.name}.rarp.ready "
        f"2>/out/{vm.name}.rarp.err & rarp{i}=$!",
        f"until [ -e /tmp/{vm.name}.rarp.ready ]; do kill -0 $rarp{i} || break; sleep 0.2; done",
        f"until grep -q REALVM-MIGRATE /out/{vm.name}.console; do",
        f"  kill -0 $q{i} || break; [ $(( $(date +%s) - t2 )) -lt 300 ] || break; sleep 1",
        "done",
        f"{sys.executable} tests/vmlab/hmp.py /tmp/{vm.name}.mon stop 'migrate \"exec:cat > {state}\"' "
        f"'info migrate' quit >/out/{vm.name}.migrate 2>&1",
        f"wait $q{i}; echo REALVM-MIGRATE-SOURCE $?",
        f"rm -f /tmp/{vm.name}.go /tmp/{vm.name}.mon",
        f"{qemu_command(kernel, vm, '/out', incoming=f'exec:cat {state}')} 2>/out/{vm.name}-in.qemu.err & q{i}=$!",
        f"until [ -S /tmp/{vm.name}.go ]; do kill -0 $q{i} || break; sleep 0.5; done",
        # loaded, it stays paused as it was saved (the stream's global state): libvirt continues it too
        f"until {sys.executable} tests/vmlab/hmp.py /tmp/{vm.name}.mon 'info status' 2>/dev/null "
        "| grep -q 'VM status: paused$'; do",
        f"  kill -0 $q{i} || break; [ $(( $(date +%s) - t2 )) -lt 300 ] || break; sleep 1",
        "done",
        f"{sys.executable} tests/vmlab/hmp.py /tmp/{vm.name}.mon cont >>/out/{vm.name}.migrate 2>&1",
        "echo REALVM-MIGRATE-RESTORED $(( $(date +%s) - t2 ))",
        go(vm),
    ]


def host_script(kernel: lab.Kernel, vms: list[VM]) -> str:
    """sh for the lab host: taps, the vsock echo server, the VMs; once they have
    booted, vtrace in both modes (capture: streaming; stat -j: counting in the
    kernel), then the go; after the VMs power off, the taps' own counters."""
    py = sys.executable
    setup = []
    for vm in vms:
        mq = " multi_queue" if vm.queues > 1 else ""
        setup.append(f"ip tuntap add {vm.tap} mode tap{mq} && ip link set {vm.tap} address {vm.mac(True)} "
                     f"&& ip addr add {vm.ip(True)}/24 dev {vm.tap} && ip link set {vm.tap} up "
                     f"&& ip neigh replace {vm.ip(False)} lladdr {vm.mac(False)} dev {vm.tap} nud permanent "
                     f"|| echo REALVM-FAIL {vm.tap}")
        if vm.disk:
            setup.append(f"dd if=/dev/urandom of=/tmp/{vm.name}.img bs=1M count=4 2>/dev/null")
    vsock = sum(1 for vm in vms if vm.cid)
    # the vsock VM is stopped mid-conversation, halfway through its messages (vsock_listen.py)
    talker = next(vm for vm in vms if vm.cid)
    pause = f"/tmp/{talker.name}.mon {max(1, talker.vsock_msgs // 2) * talker.vsock_size} {PAUSE_S}"
    starts = "\n".join(f"{qemu_command(kernel, vm, '/out')} 2>/out/{vm.name}.qemu.err & q{i}=$!"
                       for i, vm in enumerate(vms))
    booted = " && ".join(f"grep -q REALVM-WAIT /out/{vm.name}.console" for vm in vms)
    alive = " && ".join(f"kill -0 $q{i}" for i in range(len(vms)))
    migrations = [line for i, vm in enumerate(vms) if vm.migrate for line in migration(kernel, vm, i)]
    waits = "\n".join(f"wait $q{i}; echo REALVM-QEMU-{vm.name} $?" for i, vm in enumerate(vms))
    counters = " ".join(f"{vm.tap}:$(cat /sys/class/net/{vm.tap}/statistics/rx_packets):"
                        f"$(cat /sys/class/net/{vm.tap}/statistics/tx_packets)" for vm in vms)
    return "\n".join([
        *setup,
        f"{py} tests/vmlab/vsock_listen.py {VSOCK_PORT} {vsock} /out/vsock.json /tmp/vsock.ready {pause} "
        "2>/out/vsock.err & lis=$!",
        "t0=$(date +%s)",
        starts,
        f"until {booted}; do {alive} || break; [ $(( $(date +%s) - t0 )) -lt 400 ] || break; sleep 2; done",
        "echo REALVM-BOOTED $(( $(date +%s) - t0 ))",
        f"echo REALVM-TAPS-BEFORE {counters}",
        f"{py} -m vtrace.cli capture --source {SOURCE} -f -o /tmp/realvm.vtrace 2>/out/capture.err & cap=$!",
        f"{py} -m vtrace.cli stat --source {SOURCE} -j 1 >/out/stat.jsonl 2>/out/stat.err & st=$!",
        "t1=$(date +%s)",
        "until grep -q 'Hit Ctrl-C' /out/capture.err && grep -q 'Hit Ctrl-C' /out/stat.err && [ -e /tmp/vsock.ready ]; do",
        "  kill -0 $cap && kill -0 $st || break; [ $(( $(date +%s) - t1 )) -lt 300 ] || break; sleep 1",
        "done",
        "echo REALVM-READY $(( $(date +%s) - t1 ))",
        "; ".join(go(vm) for vm in vms),
        *migrations,
        waits,
        "echo REALVM-RAN $(( $(date +%s) - t1 ))",
        "wait $lis; echo REALVM-LISTEN $?",
        f"echo REALVM-TAPS-AFTER {counters}",
        *(f"kill -TERM $rarp{i}; wait $rarp{i}; echo REALVM-RARP-{vm.name} $?" for i, vm in enumerate(vms) if vm.migrate),
        # both vtrace processes end as a service manager ends them
        "kill -TERM $cap $st; wait $cap; echo REALVM-CAPTURE $?; wait $st; echo REALVM-STAT $?",
        "cp /tmp/realvm.vtrace /out/",
    ]) + "\n"


def run(workdir: Path, kernel: lab.Kernel, seed: int) -> tuple[Path, lab.Run, list[VM]]:
    """One lab boot: both VMs under vtrace. Returns (/out, the lab run, the VMs)."""
    vms = draw(random.Random(seed))
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "out"
    out.mkdir(exist_ok=True)
    tool = guest_tool(workdir)
    for vm in vms:
        guest_initramfs(kernel, vm, tool, out / f"{vm.name}.gz")
    (out / "vms.json").write_text(json.dumps([vm.__dict__ for vm in vms]))
    out, run_ = lab.run_host_root(workdir, HOST_MODULES, host_script(kernel, vms), kernel=kernel, cpus=LAB_CPUS)
    return out, run_, vms


# the guests' own counters ------------------------------------------------------------
@dataclass
class GuestCounters:
    """What the guest's own counters moved by between its go and the end
    (BEFORE and AFTER blocks on its console)."""
    up: bool
    failures: list[str]
    nic: dict[str, int]          # ETHTOOL_GSTATS name -> delta
    interrupts: dict[str, int]   # /proc/interrupts line (e.g. virtio0-input.0) -> delta, all CPUs
    vsock: dict[str, int]        # the client's sent, received
    disk_reads: int              # read I/Os completed (Documentation/block/stat.rst, field 1)


def _between(lines: list[str], begin: str, end: str) -> list[str]:
    try:
        i = lines.index(begin)
        return lines[i + 1:lines.index(end, i)]
    except ValueError:
        return []


def _nic(lines: list[str], tag: str) -> dict[str, int]:
    out = {}
    for ln in _between(lines, f"REALVM-NIC-{tag}-BEGIN", f"REALVM-NIC-{tag}-END"):
        name, _, value = ln.strip().rpartition(" ")
        if value.isdigit():
            out[name] = int(value)
    return out


def _interrupts(lines: list[str], tag: str) -> dict[str, int]:
    irq = _between(lines, f"REALVM-IRQ-{tag}-BEGIN", f"REALVM-IRQ-{tag}-END")
    ncpu = len(irq[0].split()) if irq else 0
    out = {}
    for ln in irq[1:]:
        parts = ln.split()
        if parts and parts[0].rstrip(":").isdigit():  # numbered lines: the device's name is the last word
            out[parts[-1]] = sum(int(x) for x in parts[1:1 + ncpu])
    return out


def guest_counters(console: str) -> GuestCounters:
    lines = [re.sub(r"^\[\s*\d+\.\d+\]\s?", "", ln.rstrip("\r")) for ln in console.splitlines()]
    nic0, nic1 = _nic(lines, "BEFORE"), _nic(lines, "AFTER")
    irq0, irq1 = _interrupts(lines, "BEFORE"), _interrupts(lines, "AFTER")
    vsock, disk = {}, {}
    for ln in lines:
        if ln.startswith("REALVM-VSOCK "):
            vsock = {k: int(v) for k, v in (kv.split("=") for kv in ln.split()[1:])}
        for tag in ("BEFORE", "AFTER"):
            if ln.startswith(f"REALVM-DISK-{tag} "):
                disk[tag] = int(ln.split()[1])
    return GuestCounters(up="REALVM-GO" in lines and "REALVM-DONE" in lines,
                         failures=[ln.split("REALVM-FAIL", 1)[1].strip() for ln in lines if "REALVM-FAIL" in ln],
                         nic={k: v - nic0.get(k, 0) for k, v in nic1.items()},
                         interrupts={k: v - irq0.get(k, 0) for k, v in irq1.items()},
                         vsock=vsock, disk_reads=disk.get("AFTER", 0) - disk.get("BEFORE", 0))


def tap_counters(run_: lab.Run) -> dict[str, tuple[int, int]]:
    """Each tap's (rx_packets, tx_packets) delta on the lab host over the traced
    run: frames from / to its guest."""
    def read(tag: str) -> dict[str, tuple[int, int]]:
        marker = run_.marker(f"REALVM-TAPS-{tag}") or ""
        return {t: (int(rx), int(tx)) for t, rx, tx in (w.split(":") for w in marker.split())}
    before, after = read("BEFORE"), read("AFTER")
    return {t: (rx - before[t][0], tx - before[t][1]) for t, (rx, tx) in after.items()}
