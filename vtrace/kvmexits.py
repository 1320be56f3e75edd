"""KVM exit reasons by name, from the kernel's own tables, as kvm_stat names them.

The kvm:kvm_exit tracepoint carries the hardware's exit code (the probe puts it
in the event's ``id``; kernel counting keys its counts by it too). Its meaning
depends on the host's KVM vendor module, the "isa": kvm_intel (VMX) and kvm_amd
(SVM) number their exits differently, so a code is named only with the isa the
traced host ran (``kvm_isa`` in the source's info, and so in a capture's
header). kvm_userspace_exit carries KVM's own ``KVM_EXIT_*`` reason, the same on
every host.

Names: the header's ``#define`` name without its prefix (``EXIT_REASON_``,
``SVM_EXIT_``, ``SVM_``, ``KVM_EXIT_``), upper case, as tools/kvm/kvm_stat
prints them: ``IOIO``, ``NPF``, ``EXTERNAL_INTERRUPT``, ``VMGEXIT_PSC``. Two
additions: an SVM exception intercept (``SVM_EXIT_EXCP_BASE + vector``) is
``EXCP_<vector>`` with the mnemonic the header's SVM_EXIT_REASONS prints (``DE
excp`` -> ``EXCP_DE``); a VMX code's flag bits (bits 16-31) follow its basic
reason after ``|`` (``INVALID_STATE|FAILED_VMENTRY``). A code no table has, or
any code under an unknown isa (an old capture, a PVM host), is its decimal
number. Every name comes from a fixed table, so labels made of them stay
bounded.

Headless and pure: no bcc, no textual; ``host_isa`` reads only /sys and /proc
(both injectable).
"""

from __future__ import annotations

import os

VMX = "vmx"
SVM = "svm"
PVM = "pvm"  # kvm_pvm (pagetable-based VM): its own exit numbering, no table here

# arch/x86/include/uapi/asm/vmx.h, EXIT_REASON_* (VMX_EXIT_REASONS), as of
# Linux 6.19: the basic exit reason, bits 0-15 of the VMCS exit reason field.
VMX_EXIT_REASONS: dict[int, str] = {
    0: "EXCEPTION_NMI",
    1: "EXTERNAL_INTERRUPT",
    2: "TRIPLE_FAULT",
    3: "INIT_SIGNAL",
    4: "SIPI_SIGNAL",
    7: "INTERRUPT_WINDOW",
    8: "NMI_WINDOW",
    9: "TASK_SWITCH",
    10: "CPUID",
    12: "HLT",
    13: "INVD",
    14: "INVLPG",
    15: "RDPMC",
    16: "RDTSC",
    18: "VMCALL",
    19: "VMCLEAR",
    20: "VMLAUNCH",
    21: "VMPTRLD",
    22: "VMPTRST",
    23: "VMREAD",
    24: "VMRESUME",
    25: "VMWRITE",
    26: "VMOFF",
    27: "VMON",
    28: "CR_ACCESS",
    29: "DR_ACCESS",
    30: "IO_INSTRUCTION",
    31: "MSR_READ",
    32: "MSR_WRITE",
    33: "INVALID_STATE",
    34: "MSR_LOAD_FAIL",
    36: "MWAIT_INSTRUCTION",
    37: "MONITOR_TRAP_FLAG",
    39: "MONITOR_INSTRUCTION",
    40: "PAUSE_INSTRUCTION",
    41: "MCE_DURING_VMENTRY",
    43: "TPR_BELOW_THRESHOLD",
    44: "APIC_ACCESS",
    45: "EOI_INDUCED",
    46: "GDTR_IDTR",
    47: "LDTR_TR",
    48: "EPT_VIOLATION",
    49: "EPT_MISCONFIG",
    50: "INVEPT",
    51: "RDTSCP",
    52: "PREEMPTION_TIMER",
    53: "INVVPID",
    54: "WBINVD",
    55: "XSETBV",
    56: "APIC_WRITE",
    57: "RDRAND",
    58: "INVPCID",
    59: "VMFUNC",
    60: "ENCLS",
    61: "RDSEED",
    62: "PML_FULL",
    63: "XSAVES",
    64: "XRSTORS",
    67: "UMWAIT",
    68: "TPAUSE",
    74: "BUS_LOCK",
    75: "NOTIFY",
    76: "SEAMCALL",
    77: "TDCALL",
    84: "MSR_READ_IMM",
    85: "MSR_WRITE_IMM",
}

# The same header's flag bits above the basic reason (VMX_EXIT_REASON_FLAGS
# names FAILED_VMENTRY; VMX_EXIT_REASONS_SGX_ENCLAVE_MODE is bit 27).
VMX_EXIT_REASON_FLAGS: dict[int, str] = {
    0x80000000: "FAILED_VMENTRY",
    0x08000000: "SGX_ENCLAVE_MODE",
}

# The exception vectors SVM_EXIT_REASONS names (SVM_EXIT_EXCP_BASE + *_VECTOR,
# printed "DE excp" ... "XF excp"; vectors from arch/x86/include/asm/trapnr.h).
_SVM_EXCP_BASE = 0x040
_SVM_EXCEPTIONS = {0: "DE", 1: "DB", 3: "BP", 4: "OF", 5: "BR", 6: "UD", 7: "NM", 8: "DF", 10: "TS",
                   11: "NP", 12: "SS", 13: "GP", 14: "PF", 16: "MF", 17: "AC", 18: "MC", 19: "XF"}

# arch/x86/include/uapi/asm/svm.h, SVM_EXIT_* (SVM_EXIT_REASONS) and the SEV-ES
# software-defined SVM_VMGEXIT_* exit codes, as of Linux 6.19: the VMCB's
# EXITCODE, which kvm_exit reports as a u32 (SVM_EXIT_ERR, -1, is 0xffffffff).
SVM_EXIT_REASONS: dict[int, str] = {
    0x000: "READ_CR0",
    0x002: "READ_CR2",
    0x003: "READ_CR3",
    0x004: "READ_CR4",
    0x008: "READ_CR8",
    0x010: "WRITE_CR0",
    0x012: "WRITE_CR2",
    0x013: "WRITE_CR3",
    0x014: "WRITE_CR4",
    0x018: "WRITE_CR8",
    **{0x020 + n: f"READ_DR{n}" for n in range(8)},
    **{0x030 + n: f"WRITE_DR{n}" for n in range(8)},
    **{_SVM_EXCP_BASE + v: f"EXCP_{m}" for v, m in _SVM_EXCEPTIONS.items()},
    0x060: "INTR",
    0x061: "NMI",
    0x062: "SMI",
    0x063: "INIT",
    0x064: "VINTR",
    0x065: "CR0_SEL_WRITE",
    0x066: "IDTR_READ",
    0x067: "GDTR_READ",
    0x068: "LDTR_READ",
    0x069: "TR_READ",
    0x06a: "IDTR_WRITE",
    0x06b: "GDTR_WRITE",
    0x06c: "LDTR_WRITE",
    0x06d: "TR_WRITE",
    0x06e: "RDTSC",
    0x06f: "RDPMC",
    0x070: "PUSHF",
    0x071: "POPF",
    0x072: "CPUID",
    0x073: "RSM",
    0x074: "IRET",
    0x075: "SWINT",
    0x076: "INVD",
    0x077: "PAUSE",
    0x078: "HLT",
    0x079: "INVLPG",
    0x07a: "INVLPGA",
    0x07b: "IOIO",
    0x07c: "MSR",
    0x07d: "TASK_SWITCH",
    0x07e: "FERR_FREEZE",
    0x07f: "SHUTDOWN",
    0x080: "VMRUN",
    0x081: "VMMCALL",
    0x082: "VMLOAD",
    0x083: "VMSAVE",
    0x084: "STGI",
    0x085: "CLGI",
    0x086: "SKINIT",
    0x087: "RDTSCP",
    0x088: "ICEBP",
    0x089: "WBINVD",
    0x08a: "MONITOR",
    0x08b: "MWAIT",
    0x08c: "MWAIT_COND",
    0x08d: "XSETBV",
    0x08e: "RDPRU",
    0x08f: "EFER_WRITE_TRAP",
    **{0x090 + n: f"CR{n}_WRITE_TRAP" for n in range(16)},
    0x0a2: "INVPCID",
    0x0a5: "BUS_LOCK",
    0x0a6: "IDLE_HLT",
    0x400: "NPF",
    0x401: "AVIC_INCOMPLETE_IPI",
    0x402: "AVIC_UNACCELERATED_ACCESS",
    0x403: "VMGEXIT",
    0x80000001: "VMGEXIT_MMIO_READ",
    0x80000002: "VMGEXIT_MMIO_WRITE",
    0x80000003: "VMGEXIT_NMI_COMPLETE",
    0x80000004: "VMGEXIT_AP_HLT_LOOP",
    0x80000005: "VMGEXIT_AP_JUMP_TABLE",
    0x80000010: "VMGEXIT_PSC",
    0x80000011: "VMGEXIT_GUEST_REQUEST",
    0x80000012: "VMGEXIT_EXT_GUEST_REQUEST",
    0x80000013: "VMGEXIT_AP_CREATION",
    0x80000018: "VMGEXIT_SNP_RUN_VMPL",
    0x8000fffd: "VMGEXIT_HV_FEATURES",
    0x8000fffe: "VMGEXIT_TERM_REQUEST",
    0x8000ffff: "VMGEXIT_UNSUPPORTED_EVENT",
    0xffffffff: "ERR",  # SVM_EXIT_ERR (-1): invalid guest state
}

# include/uapi/linux/kvm.h, KVM_EXIT_*: why KVM_RUN returned to the VMM
# (struct kvm_run.exit_reason; kvm:kvm_userspace_exit's reason), as of Linux 6.19.
KVM_EXIT_REASONS: dict[int, str] = {
    0: "UNKNOWN",
    1: "EXCEPTION",
    2: "IO",
    3: "HYPERCALL",
    4: "DEBUG",
    5: "HLT",
    6: "MMIO",
    7: "IRQ_WINDOW_OPEN",
    8: "SHUTDOWN",
    9: "FAIL_ENTRY",
    10: "INTR",
    11: "SET_TPR",
    12: "TPR_ACCESS",
    13: "S390_SIEIC",
    14: "S390_RESET",
    15: "DCR",
    16: "NMI",
    17: "INTERNAL_ERROR",
    18: "OSI",
    19: "PAPR_HCALL",
    20: "S390_UCONTROL",
    21: "WATCHDOG",
    22: "S390_TSCH",
    23: "EPR",
    24: "SYSTEM_EVENT",
    25: "S390_STSI",
    26: "IOAPIC_EOI",
    27: "HYPERV",
    28: "ARM_NISV",
    29: "X86_RDMSR",
    30: "X86_WRMSR",
    31: "DIRTY_RING_FULL",
    32: "AP_RESET_HOLD",
    33: "X86_BUS_LOCK",
    34: "XEN",
    35: "RISCV_SBI",
    36: "RISCV_CSR",
    37: "NOTIFY",
    38: "LOONGARCH_IOCSR",
    39: "MEMORY_FAULT",
    40: "TDX",
    41: "ARM_SEA",
}

#: the isas whose exit codes this module names
ISAS = (VMX, SVM)


def exit_name(isa: str | None, code: int) -> str:
    """kvm_exit's exit code under ``isa`` ("vmx", "svm"): its name, or its
    decimal number when no table has it (or the isa is not known)."""
    code = int(code) & 0xFFFFFFFF
    if isa == SVM:
        return SVM_EXIT_REASONS.get(code, str(code))
    if isa == VMX:
        basic = VMX_EXIT_REASONS.get(code & 0xFFFF)
        if basic is None:
            return str(code)
        flags = code & 0xFFFF0000
        parts = [basic]
        for bit, flag in VMX_EXIT_REASON_FLAGS.items():
            if flags & bit:
                parts.append(flag)
                flags &= ~bit
        if flags:
            parts.append(hex(flags))  # a flag bit the header does not name
        return "|".join(parts)
    return str(code)


def userspace_exit_name(code: int) -> str:
    """kvm_userspace_exit's reason (KVM_EXIT_*): its name, or its decimal number."""
    return KVM_EXIT_REASONS.get(int(code), str(int(code)))


def host_isa(sys_root: str = "/sys", proc_root: str = "/proc") -> str | None:
    """Which table names this host's kvm_exit codes: the KVM vendor module
    loaded (kvm_intel: "vmx", kvm_amd: "svm"; kvm_pvm alone: "pvm", which no
    table here names), else the CPU as /proc/cpuinfo describes it (its vmx or
    svm flag, else its vendor), else None."""
    mod = os.path.join(sys_root, "module")
    intel = os.path.isdir(os.path.join(mod, "kvm_intel"))
    amd = os.path.isdir(os.path.join(mod, "kvm_amd"))
    if intel != amd:
        return VMX if intel else SVM
    if not intel and os.path.isdir(os.path.join(mod, "kvm_pvm")):
        return PVM
    try:
        with open(os.path.join(proc_root, "cpuinfo")) as f:
            text = f.read(1 << 16)  # the first CPU's block is enough
    except OSError:
        return None
    vendor = flags = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = value
        if vendor and flags:
            break
    words = set(flags.split())
    if "vmx" in words:
        return VMX
    if "svm" in words:
        return SVM
    if vendor in ("GenuineIntel", "CentaurHauls", "Shanghai"):
        return VMX
    if vendor in ("AuthenticAMD", "HygonGenuine"):
        return SVM
    return None
