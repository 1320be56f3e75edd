"""The lab's own evidence when a guest hangs: at the boot's timeout QEMU's
monitor sends an NMI, the guest panics on it (unknown_nmi_panic, set by the
lab's init) and prints every CPU's stack and its whole log (panic_print), and
the error names where the guest was. Two CI runs lost a 6.1 lab guest this way
(a hung task, then an RCU stall) with no stack on a `quiet` console."""

import pytest

from tests.vmlab import lab

# The shape of a stalled 6.1 guest's console (the CI run's tail, with the NMI
# backtrace `quiet` hid and panic_print's replay of the same reports).
STALL = """\
[   85.101] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:
[   85.102] rcu: \t1-...0: (1 GPs behind) idle=7f74/1/0x4000000000000000 softirq=10232/10233 fqs=2496
[   85.103] \t(detected by 0, t=5252 jiffies, g=20769, q=1203 ncpus=2)
[   85.104] Sending NMI from CPU 0 to CPUs 1:
[   85.105] NMI backtrace for cpu 1
[   85.106] CPU: 1 PID: 148 Comm: python Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2
[   85.107] RIP: 0010:smp_call_function_many_cond+0x120/0x4a0
[   85.108] Call Trace:
[   85.109]  <TASK>
[   85.110]  ? text_poke_memset+0x20/0x20
[   85.111]  on_each_cpu_cond_mask+0x1d/0x30
[   85.112]  text_poke_bp_batch+0x9e/0x210
[   85.113] some unrelated line
[  148.509] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:
[  148.510] rcu: \t1-...0: (1 GPs behind) idle=7f74/1/0x4000000000000000 softirq=10232/10233 fqs=10496
[  148.511] \t(detected by 0, t=21007 jiffies, g=20769, q=2203 ncpus=2)
[  300.001] Kernel panic - not syncing: NMI: Not continuing
[  300.002] CPU: 0 PID: 0 Comm: swapper/0 Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2
[  300.003] RIP: 0010:native_safe_halt+0xb/0x10
[    0.000] Linux version 6.1.0-56-amd64 (replayed by panic_print)
[    0.001] rcu: \tRCU restricting CPUs from NR_CPUS=8192 to nr_cpu_ids=2.
[   85.101] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:
[   85.102] rcu: \t1-...0: (1 GPs behind) idle=7f74/1/0x4000000000000000 softirq=10232/10233 fqs=2496
[   85.103] \t(detected by 0, t=5252 jiffies, g=20769, q=1203 ncpus=2)
"""


def test_hang_report_keeps_each_report_once_with_its_stack():
    r = lab.hang_report(STALL)
    assert r.startswith("hang report: ")
    lines = r.removeprefix("hang report: ").split(" | ")
    assert lines == [
        "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
        "rcu: \t1-...0: (1 GPs behind) idle=7f74/1/0x4000000000000000 softirq=10232/10233 fqs=2496",
        "(detected by 0, t=5252 jiffies, g=20769, q=1203 ncpus=2)",
        "NMI backtrace for cpu 1",
        "CPU: 1 PID: 148 Comm: python Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2",
        "RIP: 0010:smp_call_function_many_cond+0x120/0x4a0",
        "Call Trace:", "<TASK>",
        "? text_poke_memset+0x20/0x20", "on_each_cpu_cond_mask+0x1d/0x30", "text_poke_bp_batch+0x9e/0x210",
        "Kernel panic - not syncing: NMI: Not continuing",
        "CPU: 0 PID: 0 Comm: swapper/0 Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2",
        "RIP: 0010:native_safe_halt+0xb/0x10",
    ]


def test_hang_report_without_any_report_is_the_console_tail():
    assert lab.hang_report("a\nb\nc\n") == "console tail: a | b | c"


def test_a_hung_guest_is_made_to_panic_and_say_where_it_was(tmp_path):
    k = lab.stock_kernel()
    lab.initramfs(k, [], lab.INIT_PROLOGUE + "echo VTRACE-LAB-UP\nsleep 600\n", tmp_path / "initrd.gz")
    with pytest.raises(lab.LabError) as e:
        lab.boot(k, tmp_path / "initrd.gz", ["-smp", "2"], timeout=30)
    msg = str(e.value)
    console = (tmp_path / "console.txt").read_text()
    assert "VTRACE-LAB-UP" in console, "the guest never reached its init: the test proves nothing"
    assert "did not power off within 30 s" in msg and "NMI sent, the guest panicked" in msg
    assert "Kernel panic - not syncing: NMI: Not continuing" in msg
    # panic_print's all-CPU backtrace: both CPUs are accounted for, with where they were
    assert "NMI backtrace for cpu 0" in console and "NMI backtrace for cpu 1" in console
    assert "RIP: 0010:" in msg and "Call Trace:" in msg
