// SPDX-License-Identifier: GPL-2.0
/*
 * Guest side: the virtio driver's rings (drivers/virtio/virtio_ring.c), per
 * virtqueue.
 *
 * Interrupts: where function probes are refused (our own machines), the
 * irq_handler_entry raw tracepoint (kernel/irq/handle.c
 * __handle_irq_event_percpu) gives (irq, struct irqaction *); as tp_btf
 * (probes/vtrace_tp.h) the irqaction is a typed pointer read by plain loads.
 * A per-virtqueue MSI-X vector's handler is vring_interrupt (registered by
 * vp_request_msix_vectors) with dev_id = the struct virtqueue *.
 *
 * The ring itself, where function probes are allowed (fentry/fexit or
 * kprobes, probes/vtrace_fn.h), at the exported entry points drivers call
 * (virtqueue_add_split/_packed are `inline`, hence notrace, on Debian 6.1:
 * neither fentry nor kprobe takes them, tests/vmlab):
 *   int  virtqueue_add_sgs(vq, sgs[], out_sgs, in_sgs, data, gfp), and
 *        virtqueue_add_outbuf/_inbuf(vq, sg, num, data, gfp), _inbuf_ctx(+ctx)
 *            the buffer's id is vq->free_head at entry (split: the head
 *            descriptor; packed: the buffer id)
 *   void *virtqueue_get_buf_ctx(vq, unsigned *len, void **ctx), and
 *        virtqueue_get_buf(vq, len), which inlines it on 6.1
 *            (split) consumed used->ring[last_used_idx - 1]; (packed) the
 *            descriptor at last_used_idx, read at entry
 *   bool virtqueue_kick_prepare(vq)   false: no kick needed
 *   bool virtqueue_notify(vq)         the kick itself
 *   bool virtqueue_kick(vq)           the kick, where it inlines virtqueue_notify
 * Success is read from vq->num_free, not the return value (whose place in an
 * fexit context depends on each function's argument count): an add takes
 * descriptors, a get gives them back, a failure leaves num_free alone. The
 * change is the buffer's descriptor count. A call nested in another of the
 * same point (virtqueue_get_buf -> virtqueue_get_buf_ctx, where not inlined)
 * is recorded once: the inner entry overwrites the outer's state, the inner
 * return takes it, and the outer return finds none. Overwriting, not
 * inserting only when none is pending: a call whose return was never seen
 * (it entered while vtrace attached) must not pair with the next call.
 *
 * Struct offsets come from BTF as -D macros (vtrace/live/loader.py), never
 * from headers:
 *   OFF_IRQACTION_HANDLER, OFF_IRQACTION_DEV_ID        struct irqaction
 *   OFF_VQ_NAME, OFF_VQ_INDEX, OFF_VQ_NUM_FREE,
 *   OFF_VQ_NUM_MAX, OFF_VQ_VDEV                        struct virtqueue
 *   OFF_VDEV_INDEX, OFF_VDEV_ID                        struct virtio_device
 *   OFF_VVQ_PACKED, OFF_VVQ_SPLIT_USED, OFF_VVQ_SPLIT_NUM, OFF_VVQ_FREE_HEAD,
 *   OFF_VVQ_LAST_USED, OFF_VVQ_AVAIL_SHADOW,
 *   OFF_VVQ_PACKED_DESC                                struct vring_virtqueue
 *   OFF_VVQ_PACKED_USED_WRAP (before 6.0 only)         struct vring_virtqueue
 * and VRING_INTERRUPT, the handler's address from /proc/kallsyms. Where the
 * kernel has virtio-pci's shared-vector handlers, also VP_VRING_INTERRUPT,
 * VP_INTERRUPT and OFF_VPDEV_VQS, OFF_VQINFO_VQ, OFF_VQINFO_NODE (struct
 * virtio_pci_device, virtio_pci_vq_info: virtio_pci's BTF).
 */
#include <uapi/linux/ptrace.h>
#include "vtrace.h"
#include "vtrace_tp.h"	/* btf_typed(); the interrupt point includes it again as its own */

struct vq_info {
	u32 index;
	u32 num_max;
	u32 vdev_index;		/* virtio%d */
	u32 device_id;		/* VIRTIO_ID_* */
	u32 packed;
	u32 irq;		/* its interrupt line, once it claimed an irq_slots slot; else UNOBSERVED */
	char name[16];
};

struct call {			/* entry state for the return probe */
	u64 vq;
	u32 head;
	u32 num_free;
	u32 len;		/* get_buf on a packed ring: the used descriptor's len */
	u32 pad;
};

enum { P_ADD = 1, P_GET_BUF, P_KICK_PREPARE, P_KICK };	/* call_key() points */
#define KICK_PREPARED 1	/* struct call head, in virtqueue_kick: kick_prepare said yes */
#define KICK_NOTIFIED 2	/* ... and virtqueue_notify was seen */

BPF_HASH(vq_info, u64, struct vq_info, 4096);
BPF_HASH(calls, u64, struct call, 4096);	/* (tid, point) -> entry state */
#include "vtrace_emit.inc"	/* lost, events, emit(): pasted in by the loader */

#include "vtrace_calls.inc"	/* put_call(), take_call(): pasted in by the loader */

/* Who a virtqueue is, once: its device, index, size, name. NULL (and
 * counted lost) when the table is full. */
static __always_inline struct vq_info *vq_seen(const void *vq)
{
	u64 key = (u64)vq;
	struct vq_info *vi = vq_info.lookup(&key);
	if (vi)
		return vi;
	struct vq_info z = {};
	const void *vdev = (const void *)rd_u64(vq + OFF_VQ_VDEV);
	z.index = rd_u32(vq + OFF_VQ_INDEX);
	z.num_max = rd_u32(vq + OFF_VQ_NUM_MAX);
	z.vdev_index = rd_u32(vdev + OFF_VDEV_INDEX);
	z.device_id = rd_u32(vdev + OFF_VDEV_ID);
	z.packed = rd_u64(vq + OFF_VVQ_PACKED) & 0xff;
	z.irq = UNOBSERVED;
	bpf_probe_read_kernel_str(z.name, sizeof(z.name), (const void *)rd_u64(vq + OFF_VQ_NAME));
	vq_info.insert(&key, &z);
	vi = vq_info.lookup(&key);
	if (!vi)
		count_lost(1);	/* table full: this queue's events are lost */
	return vi;
}

/* Mark this thread's enclosing virtqueue_kick call on vq, if any (vq_kick_outer_return). */
static __always_inline void mark_kick(const void *vq, u32 flag)
{
	struct call *outer = pending_call(P_KICK);
	if (outer && outer->vq == (u64)vq)
		outer->head |= flag;
}

static __always_inline void head(struct vtrace_event *e, u8 kind, const void *vq, struct vq_info *vi)
{
	event_head(e, kind, VTRACE_LAYER_VIRTIO_GUEST, (u64)vq, vi->index);
}

#ifdef VTRACE_AGG
/* Interrupt counts, per CPU, in a table direct-mapped by the interrupt line
 * and the queue's index: an array slot instead of a `counts` hash lookup on
 * the hottest point (bench/live.py --per-hit). A queue with a vector of its
 * own has a line of its own; queues sharing one vector take the slots after
 * it. Not the virtqueue's address: under tp_btf the verifier types dev_id
 * (void *) as a pointer on 6.18, and hashing a pointer's bits is refused. A
 * slot keeps the first queue that claims it, which records its line in
 * vq_info; a queue whose slot another holds counts in `counts` as before.
 * User space reads the slots of the queues vq_info knows (vq_slot() in
 * vtrace/live/counts.py), so the table is there in every counting build,
 * with or without the interrupt point (VTRACE_STRATEGIES may leave it out). */
struct vq_slot {
	u64 obj;
	u64 n;
	u64 bytes;		/* sums num_free, as `counts` does */
};
#define VQ_SLOTS 1024
BPF_PERCPU_ARRAY(irq_slots, struct vq_slot, VQ_SLOTS);

static __always_inline u32 vq_slot(u32 irq, u32 index)
{
	return (irq + index) & (VQ_SLOTS - 1);
}
#endif

#ifdef HAVE_irq_handler_entry
/* One virtqueue's interrupt, as the driver is about to see it, with the
 * descriptors it has free (vq->num_free): the ring's occupancy as the device
 * signals. */
static __always_inline void vring_irq(void *ctx, const void *vq, u32 irq)
{
	u32 at[2] = {};		/* index, num_free */
#ifdef VQ_BTF_ID
	/* tp_btf on 6.2+: the virtqueue as a typed pointer, two plain loads
	 * instead of a probe read (probes/vtrace_tp.h btf_typed()) */
	const u8 *tv = btf_typed(vq, VQ_BTF_ID);
	at[0] = *(const u32 *)(tv + OFF_VQ_INDEX);
	at[1] = *(const u32 *)(tv + OFF_VQ_NUM_FREE);
#else
	rd_pair(at, vq, OFF_VQ_INDEX, OFF_VQ_NUM_FREE);
#endif
#ifdef VTRACE_AGG
	/* Counting: the queue's own slot of irq_slots, else its `counts` entry
	 * (keyed by the index just read, not through vq_info, whose lookup cost
	 * ~100 ns more per interrupt). This program mostly runs on caches the
	 * idle vCPU lost: a hash lookup's bucket and element cost more than one
	 * array slot (bench/live.py --per-hit, 5 rounds: median 185.2 ns with
	 * the slots, 275.6 with `counts` alone). The queue's identity is
	 * recorded once, before its counter exists. `bytes` sums the free
	 * descriptors. */
	u32 i = vq_slot(irq, at[0]);
	struct vq_slot *s = irq_slots.lookup(&i);
	if (s && s->obj == (u64)vq) {
		s->n++;
		s->bytes += at[1];
		return;
	}
	if (s && !s->obj) {	/* this CPU's first interrupt of a queue in a free slot */
		struct vq_info *vi = vq_seen(vq);
		if (!vi)
			return;
		vi->irq = irq;	/* where user space finds the slot */
		s->obj = (u64)vq;
		s->n = 1;
		s->bytes = at[1];
		return;
	}
	struct vtrace_ckey k = {.obj = (u64)vq, .queue = at[0], .kind = VTRACE_SIGNAL,
				.layer = VTRACE_LAYER_VIRTIO_GUEST};
	struct vtrace_cval *v = counts.lookup(&k);
	if (!v) {
		struct vtrace_cval z = {};
		if (!vq_seen(vq))
			return;
		v = counts.lookup_or_try_init(&k, &z);
		if (!v) {
			count_lost(1);
			return;
		}
	}
	v->n++;
	v->bytes += at[1];
#else
	struct vq_info *vi = vq_seen(vq);
	if (!vi)
		return;
	struct vtrace_event e = {};
	head(&e, VTRACE_SIGNAL, vq, vi);
	/* The driver sees the interrupt, not the device's decision inputs. */
	e.id = UNOBSERVED;
	e.len = UNOBSERVED;
	e.aux = UNOBSERVED;
	e.aux2 = at[1];
	/* used->idx as the driver will read it (split rings; packed has none) */
	e.arg = vi->packed ? UNOBSERVED : rd_u16((const void *)rd_u64(vq + OFF_VVQ_SPLIT_USED) + 2);
	emit_to(ctx, &e);
#endif
}

#if defined(VP_VRING_INTERRUPT) && defined(OFF_VPDEV_VQS)
#define MAX_SHARED 16	/* queues of one device walked per shared interrupt */
#define PACKED_DESC_F_AVAIL (1 << 7)	/* VIRTIO 1.2 §2.8.1: VIRTQ_DESC_F_AVAIL */
#define PACKED_DESC_F_USED (1 << 15)	/* VIRTQ_DESC_F_USED */

/* Has the device used a buffer the driver has not taken? virtio_ring.c's own
 * test, made just before vring_interrupt makes it. Split (more_used_split):
 * last_used_idx != used->idx. Packed (more_used_packed, VIRTIO 1.2 §2.8.1):
 * the descriptor at last_used_idx has AVAIL == USED == the driver's used wrap
 * counter, which is bit 15 of last_used_idx from 6.0 on and a field of its
 * own (OFF_VVQ_PACKED_USED_WRAP, when BTF has it) before. */
static __always_inline int used_pending(const void *vq)
{
	u16 last = rd_u16(vq + OFF_VVQ_LAST_USED);
	if (!(rd_u64(vq + OFF_VVQ_PACKED) & 0xff))
		return rd_u16((const void *)rd_u64(vq + OFF_VVQ_SPLIT_USED) + 2) != last;
#ifdef OFF_VVQ_PACKED_USED_WRAP
	u16 wrap = rd_u16(vq + OFF_VVQ_PACKED_USED_WRAP) & 0xff;	/* bool */
#else
	u16 wrap = last >> 15;
	last &= 0x7fff;
#endif
	const void *desc = (const void *)rd_u64(vq + OFF_VVQ_PACKED_DESC);
	if (!desc)
		return 0;
	u16 flags = rd_u16(desc + 16 * last + 14);	/* vring_packed_desc {addr, len, id, flags} */
	u16 avail = !!(flags & PACKED_DESC_F_AVAIL), used = !!(flags & PACKED_DESC_F_USED);
	return avail == used && used == wrap;
}

/* One vector for every queue of a virtio-pci device: too few MSI-X vectors
 * (vp_vring_interrupt) or INTx (vp_interrupt, which then calls it). It calls
 * vring_interrupt on each queue of vp_dev->virtqueues, and a queue is handled
 * when the device used buffers the driver has not taken (drivers/virtio/
 * virtio_pci_common.c): used_pending(). */
static __always_inline void shared_vector(void *ctx, const void *vp, u32 irq)
{
	const void *list = vp + OFF_VPDEV_VQS;
	const void *node = (const void *)rd_u64(list);
	u32 done = 0;
#pragma clang loop unroll(full)
	for (int i = 0; i < MAX_SHARED; i++) {
		if (done || !node || node == list) {
			done = 1;
			continue;	/* not break: see probes/vhost.bpf.c used_entry */
		}
		const void *vq = (const void *)rd_u64(node - OFF_VQINFO_NODE + OFF_VQINFO_VQ);
		node = (const void *)rd_u64(node);	/* list_head.next */
		if (vq && used_pending(vq))
			vring_irq(ctx, vq, irq);
	}
	if (!done && node != list)
		count_lost(1);	/* more queues than MAX_SHARED: this interrupt's rest unseen */
}
#endif

#undef TP_POINT
#define TP_POINT TP_BTF_irq_handler_entry
#include "vtrace_tp.h"
TP_PROBE(irq_handler_entry)
{
	const void *action = (const void *)TP_ARG(1);
	u64 hd[2] = {};		/* handler, dev_id (every IRQ pays this read) */
#if TP_POINT
	hd[0] = TP_LD(u64, action, OFF_IRQACTION_HANDLER);
	hd[1] = TP_LD(u64, action, OFF_IRQACTION_DEV_ID);
#else
	rd_pair(hd, action, OFF_IRQACTION_HANDLER, OFF_IRQACTION_DEV_ID);
#endif
	if (hd[0] == VRING_INTERRUPT) {		/* a vector of its own: dev_id is the virtqueue */
		vring_irq(ctx, (const void *)hd[1], (u32)TP_ARG(0));
		return 0;
	}
#if defined(VP_VRING_INTERRUPT) && defined(OFF_VPDEV_VQS)
	if (hd[0] == VP_VRING_INTERRUPT || hd[0] == VP_INTERRUPT)	/* dev_id: the virtio_pci_device */
		shared_vector(ctx, (const void *)hd[1], (u32)TP_ARG(0));
#endif
	return 0;
}
#endif

#ifdef HAVE_vq_add
#undef FN_POINT
#define FN_POINT FENTRY_vq_add
#include "vtrace_fn.h"
int vq_add_entry(FN_CTX *ctx)
{
	const void *vq = (const void *)ARG(1);
	struct call c = {.vq = (u64)vq};
	c.head = rd_u32(vq + OFF_VVQ_FREE_HEAD);
	c.num_free = rd_u32(vq + OFF_VQ_NUM_FREE);
	put_call(P_ADD, &c);
	return 0;
}

int vq_add_return(FN_CTX *ctx)
{
	struct call a;
	if (take_call(P_ADD, &a))
		return 0;
	const void *vq = (const void *)a.vq;
	u32 nf = rd_u32(vq + OFF_VQ_NUM_FREE);
	if (nf >= a.num_free)
		return 0;	/* -ENOSPC, -EIO: nothing was made available */
	struct vq_info *vi = vq_seen(vq);
	if (!vi)
		return 0;
	struct vtrace_event e = {};
	head(&e, VTRACE_AVAIL, vq, vi);
	e.id = a.head;
	e.len = UNOBSERVED;	/* byte counts need the scatterlist walk: not read */
	e.aux = UNOBSERVED;
	e.aux2 = a.num_free - nf;
	e.arg = vi->packed ? UNOBSERVED : rd_u16(vq + OFF_VVQ_AVAIL_SHADOW);
	emit(&e);
	return 0;
}
#endif

#ifdef HAVE_vq_get_buf
#undef FN_POINT
#define FN_POINT FENTRY_vq_get_buf
#include "vtrace_fn.h"
int vq_get_buf_entry(FN_CTX *ctx)
{
	const void *vq = (const void *)ARG(1);
	struct call c = {.vq = (u64)vq};
	c.num_free = rd_u32(vq + OFF_VQ_NUM_FREE);
	c.head = UNOBSERVED;
	c.len = UNOBSERVED;
	if (rd_u64(vq + OFF_VVQ_PACKED) & 0xff) {
		/* Packed (virtqueue_get_buf_ctx_packed): the next used buffer is the
		 * descriptor at last_used_idx (bit 15 is the wrap counter from 6.0
		 * on), struct vring_packed_desc {le64 addr; le32 len; le16 id; le16
		 * flags}. Read before the driver takes it: once taken, a new add may
		 * reuse the slot. Whether it was used, num_free says at the return. */
		u16 last = rd_u16(vq + OFF_VVQ_LAST_USED) & 0x7fff;
		const void *desc = (const void *)rd_u64(vq + OFF_VVQ_PACKED_DESC);
		u32 d[4] = {};
		if (desc && !bpf_probe_read_kernel(d, sizeof(d), desc + 16 * last)) {
			c.len = d[2];
			c.head = d[3] & 0xffff;
		}
	}
	put_call(P_GET_BUF, &c);
	return 0;
}

int vq_get_buf_return(FN_CTX *ctx)
{
	struct call a;
	if (take_call(P_GET_BUF, &a))
		return 0;
	const void *vq = (const void *)a.vq;
	u32 nf = rd_u32(vq + OFF_VQ_NUM_FREE);
	if (nf <= a.num_free)
		return 0;	/* nothing used */
	struct vq_info *vi = vq_seen(vq);
	if (!vi)
		return 0;
	struct vtrace_event e = {};
	head(&e, VTRACE_USED, vq, vi);
	e.aux2 = nf - a.num_free;
	e.id = UNOBSERVED;
	e.len = UNOBSERVED;
	e.arg = UNOBSERVED;
	if (!vi->packed) {
		/* the entry just consumed: used->ring[(last_used_idx - 1) % num] */
		u16 last = rd_u16(vq + OFF_VVQ_LAST_USED);
		u32 num = rd_u32(vq + OFF_VVQ_SPLIT_NUM);
		const void *used = (const void *)rd_u64(vq + OFF_VVQ_SPLIT_USED);
		u32 el[2] = {};
		if (num && !bpf_probe_read_kernel(el, sizeof(el), used + 4 + 8 * ((u16)(last - 1) & (num - 1)))) {
			e.id = el[0];
			e.len = el[1];
		}
		e.arg = last;
	} else {
		e.id = a.head;	/* the buffer id: what vq_add recorded as the head */
		e.len = a.len;
	}
	emit(&e);
	return 0;
}
#endif

#ifdef HAVE_vq_kick
#undef FN_POINT
#define FN_POINT FENTRY_vq_kick
#include "vtrace_fn.h"
static __always_inline void kick(void *ctx, const void *vq)
{
	struct vq_info *vi = vq_seen(vq);
	if (!vi)
		return;
	struct vtrace_event e = {};
	head(&e, VTRACE_KICK, vq, vi);
	e.arg = vi->packed ? UNOBSERVED : rd_u16(vq + OFF_VVQ_AVAIL_SHADOW);
	emit(&e);
}

int vq_kick_entry(FN_CTX *ctx)
{
	const void *vq = (const void *)ARG(1);
	kick(ctx, vq);
	/* inside virtqueue_kick: this notify was seen, its return must not add one */
	mark_kick(vq, KICK_NOTIFIED);
	return 0;
}

/* virtqueue_kick(vq) = virtqueue_kick_prepare(vq) ? virtqueue_notify(vq) : true,
 * with virtqueue_notify inlined (Debian 6.1's virtio_ring calls vq->notify
 * straight from virtqueue_kick), so the kicks of every driver that uses it
 * (9p, vsock, console, virtio-net's RX refill) never reach vq_kick_entry. The
 * kick_prepare return inside marks the call KICK_PREPARED; the return here
 * records the kick that followed, unless virtqueue_notify was seen itself. */
int vq_kick_outer_entry(FN_CTX *ctx)
{
	struct call c = {.vq = ARG(1)};
	put_call(P_KICK, &c);
	return 0;
}

int vq_kick_outer_return(FN_CTX *ctx)
{
	struct call a;
	if (take_call(P_KICK, &a))
		return 0;
	if ((a.head & (KICK_PREPARED | KICK_NOTIFIED)) == KICK_PREPARED)
		kick(ctx, (const void *)a.vq);
	return 0;
}
#endif

#ifdef HAVE_vq_kick_suppressed
#undef FN_POINT
#define FN_POINT FENTRY_vq_kick_suppressed
#include "vtrace_fn.h"
int kick_prepare_entry(FN_CTX *ctx)
{
	struct call c = {.vq = ARG(1)};
	put_call(P_KICK_PREPARE, &c);
	return 0;
}

int kick_prepare_return(FN_CTX *ctx)
{
	struct call a;
	if (take_call(P_KICK_PREPARE, &a))
		return 0;
	const void *vq = (const void *)a.vq;
	if (RETVAL & 0xff) {
		/* a kick follows: virtqueue_notify records it, or virtqueue_kick's return */
		mark_kick(vq, KICK_PREPARED);
		return 0;
	}
	struct vq_info *vi = vq_seen(vq);
	if (!vi)
		return 0;
	struct vtrace_event e = {};
	head(&e, VTRACE_KICK_SUPPRESSED, vq, vi);
	e.arg = vi->packed ? UNOBSERVED : rd_u16(vq + OFF_VVQ_AVAIL_SHADOW);
	emit(&e);
	return 0;
}
#endif
