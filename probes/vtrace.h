/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vtrace.h - the one record every vtrace probe emits.
 *
 * Fixed 48-byte little-endian layout, mirrored field by field by
 * vtrace/events.py (RECORD_DTYPE); tests/unit/test_events.py parses this file
 * and fails if the two ever disagree. Keep members naturally aligned so that
 * neither side needs packing pragmas.
 *
 * Per-kind meaning of id/len/aux/aux2/arg is documented in vtrace/events.py
 * (KIND_FIELDS) and docs/events.md.
 */
#ifndef __VTRACE_H
#define __VTRACE_H

#define VTRACE_RECORD_VERSION 1
#define VTRACE_NO_QUEUE 0xffff

enum vtrace_layer {
	VTRACE_LAYER_VTRACE = 0,	/* vtrace itself: lost events */
	VTRACE_LAYER_VHOST = 1,
	VTRACE_LAYER_VIRTIO_GUEST = 2,
	VTRACE_LAYER_VFIO = 3,
	VTRACE_LAYER_KVM = 4,
	VTRACE_LAYER_IOMMU = 5,
	VTRACE_LAYER_QEMU = 6,		/* QEMU's device model, from its trace log (no probe) */
};

enum vtrace_kind {
	/* ring data path */
	VTRACE_AVAIL = 1,		/* driver made a buffer available */
	VTRACE_FETCH = 2,		/* device fetched a descriptor chain */
	VTRACE_USED = 3,		/* device put a buffer in the used ring */
	VTRACE_KICK = 4,		/* driver -> device notification */
	VTRACE_KICK_SUPPRESSED = 5,	/* driver skipped a kick (suppression) */
	VTRACE_SIGNAL = 6,		/* device -> driver notification */
	VTRACE_SIGNAL_SUPPRESSED = 7,	/* device decided no signal was needed */
	VTRACE_NOTIFY_ENABLE = 8,
	VTRACE_NOTIFY_DISABLE = 9,
	/* ring and device lifecycle */
	VTRACE_VRING_BASE_GET = 16,
	VTRACE_VRING_BASE_SET = 17,
	VTRACE_SUSPEND = 18,
	VTRACE_RESUME = 19,
	VTRACE_RESET = 20,
	VTRACE_QUEUE_RESET = 21,
	VTRACE_VRING_ENABLE = 22,	/* vhost-vdpa SET_VRING_ENABLE, id = 0/1 */
	VTRACE_SET_OWNER = 23,		/* VHOST_SET_OWNER, per queue */
	VTRACE_RELEASE = 24,		/* the device (per queue) or VM let go: vhost_dev_cleanup, kvm_destroy_vm */
	/* virtio admin commands */
	VTRACE_ADMIN_SUBMIT = 32,
	VTRACE_ADMIN_COMPLETE = 33,
	/* kvm */
	VTRACE_KVM_EXIT = 48,
	VTRACE_KVM_PIO = 49,
	VTRACE_KVM_MMIO = 50,
	VTRACE_KVM_USERSPACE_EXIT = 51,
	VTRACE_KVM_IOEVENTFD = 52,
	VTRACE_KVM_IRQFD = 53,
	VTRACE_KVM_SET_IRQ = 54,
	VTRACE_KVM_MSI = 55,
	VTRACE_NONCOHERENT_DMA_REGISTER = 56,
	VTRACE_NONCOHERENT_DMA_UNREGISTER = 57,
	/* vfio / iommu */
	VTRACE_DMA_MAP = 64,
	VTRACE_DMA_UNMAP = 65,
	VTRACE_MIGRATION_STATE = 66,
	VTRACE_VFIO_IOCTL = 67,		/* container, group or device fd */
	VTRACE_VFIO_REGION_RW = 68,	/* read()/write() on a device fd */
	VTRACE_VFIO_MMAP = 69,		/* mmap() of a device region */
	/* vtrace itself */
	VTRACE_LOST = 255,		/* arg = number of records lost */
};

struct vtrace_event {
	__u64 ts;	/*  0: bpf_ktime_get_ns(), CLOCK_MONOTONIC */
	__u64 obj;	/*  8: kernel object the event is about (vq, device, kvm) */
	__u64 arg;	/* 16: wide payload (ring index, bytes, latency, gpa) */
	__u32 pid;	/* 24: tgid of the task that hit the probe */
	__u32 id;	/* 28: head id, opcode, exit reason, port, gsi */
	__u32 len;	/* 32: byte length or status */
	__u32 aux;	/* 36: kind-specific */
	__u32 aux2;	/* 40: kind-specific */
	__u16 queue;	/* 44: virtqueue index, VTRACE_NO_QUEUE if none */
	__u8 kind;	/* 46: enum vtrace_kind */
	__u8 layer;	/* 47: enum vtrace_layer */
};

#ifdef VTRACE_RB_PAGES	/* compiled as a probe program (bcc sets it) */

#define UNOBSERVED 0xffffffffU	/* a field the probe cannot see (vtrace/events.py) */

static __always_inline u64 rd_u64(const void *p)
{
	u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), p);
	return v;
}

static __always_inline u32 rd_u32(const void *p)
{
	u32 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), p);
	return v;
}

static __always_inline u16 rd_u16(const void *p)
{
	u16 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), p);
	return v;
}

/* Two fields of one width into p[0] and p[1]: one probe read where they sit
 * side by side, which costs about what one field does (bench/bpf_ops.py).
 * The test is on BTF offsets (-D constants), so only one branch is built. */
#define rd_pair(p, base, off0, off1)							\
	do {										\
		if ((off1) == (off0) + sizeof((p)[0])) {				\
			bpf_probe_read_kernel((p), 2 * sizeof((p)[0]), (base) + (off0));	\
		} else {								\
			bpf_probe_read_kernel(&(p)[0], sizeof((p)[0]), (base) + (off0));	\
			bpf_probe_read_kernel(&(p)[1], sizeof((p)[1]), (base) + (off1));	\
		}									\
	} while (0)

/* Kinds summed in maps when counting (-DVTRACE_AGG, vtrace_emit.inc); the
 * rest (lifecycle 16-23, admin 32-33, non-coherent DMA 56-57, migration 66,
 * vfio ioctls and region access) are rare and stream as records. */
static __always_inline int hot_kind(u8 kind)
{
	return kind < VTRACE_VRING_BASE_GET ||
	       (kind >= VTRACE_KVM_EXIT && kind <= VTRACE_KVM_MSI) ||
	       kind == VTRACE_DMA_MAP || kind == VTRACE_DMA_UNMAP;
}

/* The fields every record starts with; the caller fills in the rest.
 * Counting a hot kind needs no time stamp except for a buffer's start and
 * completion, and the clock is among the dearest helpers here (a kvm-clock
 * guest: 36.5 ns, bench/bpf_ops.py): ts stays 0 and account_flight() reads it. */
static __always_inline void event_head(struct vtrace_event *e, u8 kind, u8 layer, u64 obj, u16 queue)
{
#ifdef VTRACE_AGG
	e->ts = hot_kind(kind) ? 0 : bpf_ktime_get_ns();
#else
	e->ts = bpf_ktime_get_ns();
#endif
	e->obj = obj;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->kind = kind;
	e->layer = layer;
	e->queue = queue;
}

/* Key of an entry probe's saved state for its return probe: (thread, point).
 * An interrupt that lands on an idle CPU runs as that CPU's idle task, and
 * every idle task has pid 0: there the CPU is the thread (an interrupt does
 * not migrate), or two CPUs' completions at once would share one entry (the
 * guest-virtio lab lost a used buffer that way). pid_max is far below 2^31. */
static __always_inline u64 call_key(u32 point)
{
	u64 tid = bpf_get_current_pid_tgid() & 0xffffffffULL;
	if (!tid)
		tid = 0x80000000ULL | bpf_get_smp_processor_id();
	return tid | ((u64)point << 32);
}

/*
 * Each program declares its own `events` ring buffer, `lost` counter and
 * emit(): bcc rewrites map calls only in the program's file, not in headers
 * or macros ("cannot use map function inside a macro").
 */

#endif /* VTRACE_RB_PAGES */

#endif /* __VTRACE_H */
