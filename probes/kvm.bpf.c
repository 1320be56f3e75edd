// SPDX-License-Identifier: GPL-2.0
/*
 * KVM: exits, port and MMIO accesses, exits to user space, interrupt
 * injection. Tracepoints only (arch/x86/kvm/trace.h, include/trace/events/kvm.h):
 * their formats are stable and they attach where function probes are
 * refused. A tracepoint this kernel lacks is compiled out (HAVE_<name>,
 * set by the loader from tracefs) and reported as not attached.
 *
 * The VM is the task that hits the probe (the VMM's tgid) for exits, pio,
 * mmio and user-space exits: vCPU threads. An interrupt raised through an
 * irqfd is the VM's by its struct kvm (kvm->userspace_pid), whoever raises it:
 * a kworker (virt/kvm/eventfd.c irqfd_inject, the slow path) or the task that
 * signalled the eventfd (irqfd_wakeup -> kvm_arch_set_irq_inatomic, the MSI
 * fast path: a vhost worker, which on 6.1 is a kthread of its own tgid). Both
 * paths note the VM for their thread while they run (irq_vm), and the
 * kvm_set_irq / kvm_msi_set_irq tracepoints they fire read it there.
 */
#include <uapi/linux/ptrace.h>
#include "vtrace.h"

#define KVM_OBJ(tgid) (0x4b564d0000000000ULL | (u64)(tgid))	/* "KVM" + tgid */
#define EWOULDBLOCK 11	/* kvm_arch_set_irq_inatomic: "not here, use the slow path" */

/* thread id -> the VM (userspace_pid) whose interrupt that thread is raising now */
BPF_TABLE("lru_hash", u32, u32, irq_vm, 1024);

struct call {
	u64 vm, gsi;
};
BPF_HASH(calls, u64, struct call, 1024);	/* (tid, point) -> entry state for the return probe */

#include "vtrace_emit.inc"	/* lost, events, emit(): pasted in by the loader */

#include "vtrace_calls.inc"	/* put_call(), take_call(): pasted in by the loader */
/* TRACEPOINT_PROBE names its context `args`: those bodies call emit_to(args, ...) */

static __always_inline void head(struct vtrace_event *e, u8 kind)
{
	event_head(e, kind, VTRACE_LAYER_KVM, 0, VTRACE_NO_QUEUE);
	e->obj = KVM_OBJ(e->pid);
}

/* An injection's event: the VM an irqfd path noted for this thread, else the
 * task's own (a VMM thread: KVM_SIGNAL_MSI, KVM_IRQ_LINE). */
static __always_inline void injection_head(struct vtrace_event *e, u8 kind)
{
	head(e, kind);
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u32 *vm = irq_vm.lookup(&tid);
	if (vm)
		e->obj = KVM_OBJ(*vm);
}

#if defined(HAVE_irqfd) || defined(HAVE_irqfd_fast) || defined(HAVE_set_irq) || defined(HAVE_release)
static __always_inline u32 userspace_pid(const void *kvm)
{
	u32 vm = 0;
	bpf_probe_read_kernel(&vm, sizeof(vm), kvm + OFF_KVM_USERSPACE_PID);
	return vm;
}
#endif

#ifdef HAVE_kvm_exit
TRACEPOINT_PROBE(kvm, kvm_exit)
{
	struct vtrace_event e = {};
	head(&e, VTRACE_KVM_EXIT);
	e.id = args->exit_reason;
	emit_to(args, &e);
	return 0;
}
#endif

#ifdef HAVE_kvm_pio
TRACEPOINT_PROBE(kvm, kvm_pio)
{
	struct vtrace_event e = {};
	head(&e, VTRACE_KVM_PIO);
	e.id = args->port;
	e.len = args->size;
	e.aux = args->rw;	/* KVM_PIO_OUT = 1 */
	e.arg = args->val;
	emit_to(args, &e);
	return 0;
}
#endif

#ifdef HAVE_kvm_mmio
TRACEPOINT_PROBE(kvm, kvm_mmio)
{
	struct vtrace_event e = {};
	head(&e, VTRACE_KVM_MMIO);
	e.len = args->len;
	e.aux = args->type == 2;	/* KVM_TRACE_MMIO_WRITE */
	e.arg = args->gpa;
	emit_to(args, &e);
	return 0;
}
#endif

#ifdef HAVE_kvm_userspace_exit
TRACEPOINT_PROBE(kvm, kvm_userspace_exit)
{
	struct vtrace_event e = {};
	head(&e, VTRACE_KVM_USERSPACE_EXIT);
	e.id = args->reason;
	emit_to(args, &e);
	return 0;
}
#endif

#ifdef HAVE_kvm_set_irq
TRACEPOINT_PROBE(kvm, kvm_set_irq)
{
	struct vtrace_event e = {};
	injection_head(&e, VTRACE_KVM_SET_IRQ);
	e.id = args->gsi;
	e.aux = args->level;
	emit_to(args, &e);
	return 0;
}
#endif

#ifdef HAVE_kvm_msi_set_irq
TRACEPOINT_PROBE(kvm, kvm_msi_set_irq)
{
	struct vtrace_event e = {};
	injection_head(&e, VTRACE_KVM_MSI);
	e.id = args->data;
	e.arg = args->address;
	emit_to(args, &e);
	return 0;
}
#endif

/*
 * Function probes (kprobes), where the kernel allows them:
 *   static int ioeventfd_write(struct kvm_vcpu *, struct kvm_io_device *, gpa_t addr,
 *                              int len, const void *val)       virt/kvm/eventfd.c: a guest
 *            write matched an ioeventfd and signals it in the kernel (no exit)
 *   static void irqfd_inject(struct work_struct *work)          virt/kvm/eventfd.c: the
 *            kworker that raises an irqfd's GSI; work is irqfd->inject, and the VM is
 *            irqfd->kvm->userspace_pid (OFF_IRQFD_*, OFF_KVM_USERSPACE_PID from BTF)
 *   int kvm_arch_set_irq_inatomic(...)                           arch/x86/kvm/irq_comm.c:
 *            irqfd_wakeup's MSI fast path, in the task that signalled the eventfd
 *   void kvm_arch_(un)register_noncoherent_dma(struct kvm *)    arch/x86/kvm/x86.c: a VFIO
 *            device without snoop control joined (left) the VM (seed 003)
 */
#ifdef HAVE_ioeventfd
#undef FN_POINT
#define FN_POINT FENTRY_ioeventfd
#include "vtrace_fn.h"
int ioeventfd_entry(FN_CTX *ctx)
{
	struct vtrace_event e = {};
	head(&e, VTRACE_KVM_IOEVENTFD);
	e.arg = ARG(3);	/* addr */
	e.len = ARG(4);	/* len */
	emit(&e);
	return 0;
}
#endif

#ifdef HAVE_irqfd
#undef FN_POINT
#define FN_POINT FENTRY_irqfd
#include "vtrace_fn.h"
/* the slow path: a kworker runs irqfd->inject; aux 0 */
int irqfd_entry(FN_CTX *ctx)
{
	const void *irqfd = (const void *)(ARG(1) - OFF_IRQFD_INJECT);
	const void *kvm = 0;
	u32 gsi = 0;
	bpf_probe_read_kernel(&kvm, sizeof(kvm), irqfd + OFF_IRQFD_KVM);
	bpf_probe_read_kernel(&gsi, sizeof(gsi), irqfd + OFF_IRQFD_GSI);
	u32 vm = userspace_pid(kvm), tid = (u32)bpf_get_current_pid_tgid();
	irq_vm.update(&tid, &vm);
	struct vtrace_event e = {};
	head(&e, VTRACE_KVM_IRQFD);
	e.obj = KVM_OBJ(vm);	/* the VM, not the kworker */
	e.id = gsi;
	emit(&e);
	return 0;
}

int irqfd_return(FN_CTX *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	irq_vm.delete(&tid);
	return 0;
}
#endif

#ifdef HAVE_irqfd_fast
#undef FN_POINT
#define FN_POINT FENTRY_irqfd_fast
#include "vtrace_fn.h"
/*
 * The fast path: int kvm_arch_set_irq_inatomic(struct kvm_kernel_irq_routing_entry *e,
 * struct kvm *kvm, int irq_source_id, int level, bool line_status) (arch/x86/kvm/irq_comm.c),
 * called by irqfd_wakeup in the signalling task. -EWOULDBLOCK hands the injection
 * to irqfd_inject (counted there), so only the others count here; aux 1.
 */
int irqfd_fast_entry(FN_CTX *ctx)
{
	struct call c = {};
	u32 gsi = 0;
	bpf_probe_read_kernel(&gsi, sizeof(gsi), (const void *)ARG(1) + OFF_ROUTE_GSI);
	c.vm = userspace_pid((const void *)ARG(2));
	c.gsi = gsi;
	put_call(1, &c);
	u32 vm = c.vm, tid = (u32)bpf_get_current_pid_tgid();
	irq_vm.update(&tid, &vm);
	return 0;
}

int irqfd_fast_return(FN_CTX *ctx)
{
	struct call c;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	irq_vm.delete(&tid);
	if (take_call(1, &c) || (int)RETVAL == -EWOULDBLOCK)
		return 0;
	struct vtrace_event e = {};
	head(&e, VTRACE_KVM_IRQFD);
	e.obj = KVM_OBJ(c.vm);
	e.id = c.gsi;
	e.aux = 1;
	emit(&e);
	return 0;
}
#endif

#ifdef HAVE_set_irq
#undef FN_POINT
#define FN_POINT FENTRY_set_irq
#include "vtrace_fn.h"
/*
 * int kvm_set_irq(struct kvm *kvm, int irq_source_id, u32 irq, int level, bool line_status)
 * (virt/kvm/irqchip.c), where the kvm_set_irq tracepoint fires: the VM by its
 * struct kvm, also when a kthread raises the line (6.1's in-kernel PIT worker
 * "kvm-pit/<pid>" has a tgid of its own). Kernels that refuse function probes
 * take the tracepoint (kvm_set_irq above) instead.
 */
int set_irq_entry(FN_CTX *ctx)
{
	struct vtrace_event e = {};
	head(&e, VTRACE_KVM_SET_IRQ);
	e.obj = KVM_OBJ(userspace_pid((const void *)ARG(1)));
	e.id = (u32)ARG(3);
	e.aux = (u32)ARG(4);
	emit(&e);
	return 0;
}
#endif

#ifdef HAVE_noncoherent_dma
#undef FN_POINT
#define FN_POINT FENTRY_noncoherent_dma
#include "vtrace_fn.h"
int noncoherent_register_entry(FN_CTX *ctx)
{
	struct vtrace_event e = {};
	head(&e, VTRACE_NONCOHERENT_DMA_REGISTER);
	emit(&e);
	return 0;
}

int noncoherent_unregister_entry(FN_CTX *ctx)
{
	struct vtrace_event e = {};
	head(&e, VTRACE_NONCOHERENT_DMA_UNREGISTER);
	emit(&e);
	return 0;
}
#endif

#ifdef HAVE_release
#undef FN_POINT
#define FN_POINT FENTRY_release
#include "vtrace_fn.h"
/*
 * static void kvm_destroy_vm(struct kvm *kvm) (virt/kvm/kvm_main.c): the last
 * reference to the VM went (kvm_put_kvm), once per VM; the task is whoever
 * dropped it, the VM is its struct kvm. vtrace keeps a VM's row until then
 * (vtrace/aggregate/slots.py), however long it is stopped.
 */
int release_entry(FN_CTX *ctx)
{
	struct vtrace_event e = {};
	head(&e, VTRACE_RELEASE);
	e.obj = KVM_OBJ(userspace_pid((const void *)ARG(1)));
	emit(&e);
	return 0;
}
#endif
