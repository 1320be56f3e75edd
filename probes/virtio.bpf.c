// SPDX-License-Identifier: GPL-2.0
/*
 * Guest side: virtio driver interrupts per virtqueue.
 *
 * Where function probes are refused (our own machines), the irq_handler_entry
 * raw tracepoint (kernel/irq/handle.c __handle_irq_event_percpu) gives
 * (irq, struct irqaction *). A per-virtqueue MSI-X vector's handler is
 * vring_interrupt (drivers/virtio/virtio_ring.c, registered by
 * vp_request_msix_vectors) with dev_id = the struct virtqueue *. Struct
 * offsets come from BTF as -D macros (vtrace/sources/live.py), never from
 * headers:
 *   OFF_IRQACTION_HANDLER, OFF_IRQACTION_DEV_ID        struct irqaction
 *   OFF_VQ_NAME, OFF_VQ_INDEX, OFF_VQ_NUM_FREE,
 *   OFF_VQ_NUM_MAX, OFF_VQ_VDEV                        struct virtqueue
 *   OFF_VDEV_INDEX, OFF_VDEV_ID                        struct virtio_device
 *   OFF_VVQ_PACKED, OFF_VVQ_SPLIT_USED                 struct vring_virtqueue
 * and VRING_INTERRUPT, the handler's address from /proc/kallsyms.
 */
#include "vtrace.h"

struct vq_info {
	u32 index;
	u32 num_max;
	u32 num_free;		/* at the last interrupt */
	u32 vdev_index;		/* virtio%d */
	u32 device_id;		/* VIRTIO_ID_* */
	u32 packed;
	char name[16];
};

BPF_HASH(vq_info, u64, struct vq_info, 4096);
#include "vtrace_emit.inc"	/* lost, events, emit(): pasted in by the loader */

#ifdef HAVE_irq_handler_entry
RAW_TRACEPOINT_PROBE(irq_handler_entry)
{
	const void *action = (const void *)ctx->args[1];
#if OFF_IRQACTION_DEV_ID == OFF_IRQACTION_HANDLER + 8
	/* handler and dev_id side by side: one read for both (every IRQ pays it) */
	u64 hd[2] = {};
	bpf_probe_read_kernel(hd, sizeof(hd), action + OFF_IRQACTION_HANDLER);
	if (hd[0] != VRING_INTERRUPT)
		return 0;
	const void *vq = (const void *)hd[1];
#else
	if (rd_u64(action + OFF_IRQACTION_HANDLER) != VRING_INTERRUPT)
		return 0;
	const void *vq = (const void *)rd_u64(action + OFF_IRQACTION_DEV_ID);
#endif
	u64 key = (u64)vq;
	struct vq_info *vi = vq_info.lookup(&key);
	if (!vi) {
		/* First interrupt of this queue: who it is, once. */
		struct vq_info z = {};
		const void *vdev = (const void *)rd_u64(vq + OFF_VQ_VDEV);
		z.index = rd_u32(vq + OFF_VQ_INDEX);
		z.num_max = rd_u32(vq + OFF_VQ_NUM_MAX);
		z.vdev_index = rd_u32(vdev + OFF_VDEV_INDEX);
		z.device_id = rd_u32(vdev + OFF_VDEV_ID);
		z.packed = rd_u64(vq + OFF_VVQ_PACKED) & 0xff;
		bpf_probe_read_kernel_str(z.name, sizeof(z.name), (const void *)rd_u64(vq + OFF_VQ_NAME));
		vq_info.insert(&key, &z);
		vi = vq_info.lookup(&key);
		if (!vi)
			return 0;
	}
	vi->num_free = rd_u32(vq + OFF_VQ_NUM_FREE);
	struct vtrace_event e = {};
	e.ts = bpf_ktime_get_ns();
	e.obj = key;
	e.pid = bpf_get_current_pid_tgid() >> 32;
	e.kind = VTRACE_SIGNAL;
	e.layer = VTRACE_LAYER_VIRTIO_GUEST;
	e.queue = vi->index;
	/* The driver sees the interrupt, not the device's decision inputs. */
	e.id = UNOBSERVED;
	e.len = UNOBSERVED;
	e.aux = UNOBSERVED;
	e.arg = UNOBSERVED;
#ifndef VTRACE_AGG
	/* used->idx as the driver will read it (split rings; packed has none);
	 * only a streamed record carries it, so counting skips the two reads. */
	if (!vi->packed)
		e.arg = rd_u16((const void *)rd_u64(vq + OFF_VVQ_SPLIT_USED) + 2);
#endif
	emit(&e);
	return 0;
}
#endif
