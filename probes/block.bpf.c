// SPDX-License-Identifier: GPL-2.0
/*
 * Guest side: block requests per blk-mq hardware queue, for per-request
 * latency. virtio-blk maps hardware queue N to virtqueue N
 * (drivers/block/virtio_blk.c virtio_queue_rq: vblk->vqs[hctx->queue_num]),
 * and a request's tag is unique among that queue's requests in flight, so
 * issue and completion pair like a descriptor's head in a ring.
 *
 * Raw tracepoints block_rq_issue(struct request *) and
 * block_rq_complete(struct request *, blk_status_t, unsigned int nr_bytes)
 * (include/trace/events/block.h), as tp_btf where the kernel allows it (the
 * request a typed pointer, probes/vtrace_tp.h). Offsets from BTF:
 *   OFF_RQ_Q, OFF_RQ_HCTX, OFF_RQ_FLAGS, OFF_RQ_TAG, OFF_RQ_LEN   struct request
 *   OFF_HCTX_NUM                                                  struct blk_mq_hw_ctx
 *   OFF_Q_DISK, OFF_Q_ID                                          struct request_queue
 *   OFF_DISK_NAME                                                 struct gendisk
 */
#include "vtrace.h"

#define REQ_OP_MASK 0xff	/* include/linux/blk_types.h */
#define REQ_OP_READ 0
#define REQ_OP_WRITE 1

struct hq_info {
	u32 queue_num;
	u32 slot;		/* its hq_slots slot (counting, tp_btf), else UNOBSERVED */
	char disk[32];
};

struct hq_cache {		/* a hardware queue's object, found from its hctx */
	u64 q;			/* the request_queue it was found with */
	u64 obj;
	u32 queue_num;
	u32 pad;
};

BPF_HASH(hq_info, u64, struct hq_info, 1024);	/* obj -> who (read by user space) */
BPF_HASH(hq_cache, u64, struct hq_cache, 1024);	/* hctx -> obj */
#include "vtrace_emit.inc"	/* lost, events, emit(): pasted in by the loader */

/* The request's fields this program reads, in one probe read where they lie
 * within 64 bytes (on 6.x: q, mq_hctx, cmd_flags, tag, __data_len, the first
 * 48): a probe read costs about the same for 8 bytes as for 64 (30.3 and
 * 33.7 ns here, bench/bpf_ops.py). */
#define MIN2_(a, b) ((a) < (b) ? (a) : (b))
#define MAX2_(a, b) ((a) > (b) ? (a) : (b))
#define RQ_LO (MIN2_(MIN2_(OFF_RQ_Q, OFF_RQ_HCTX), MIN2_(MIN2_(OFF_RQ_FLAGS, OFF_RQ_TAG), OFF_RQ_LEN)) & ~7)
#define RQ_HI MAX2_(MAX2_(OFF_RQ_Q + 8, OFF_RQ_HCTX + 8), MAX2_(MAX2_(OFF_RQ_FLAGS, OFF_RQ_TAG), OFF_RQ_LEN) + 4)
#define RQ_AT(h, off, type) (*(type *)((u8 *)(h) + (off) - RQ_LO))

struct rq_fields {
	u64 q;
	u64 hctx;
	u32 flags;
	u32 len;
	int tag;
};

static __always_inline void rq_read(const void *rq, struct rq_fields *f, int typed_rq)
{
	if (typed_rq) {		/* tp_btf: rq is a typed pointer, its fields plain loads */
		f->q = *(const u64 *)(rq + OFF_RQ_Q);
		f->hctx = *(const u64 *)(rq + OFF_RQ_HCTX);
		f->flags = *(const u32 *)(rq + OFF_RQ_FLAGS);
		f->tag = *(const int *)(rq + OFF_RQ_TAG);
		f->len = *(const u32 *)(rq + OFF_RQ_LEN);
	} else if (RQ_HI - RQ_LO <= 64) {
		u64 h[8] = {};
		bpf_probe_read_kernel(h, RQ_HI - RQ_LO <= 64 ? RQ_HI - RQ_LO : 64, rq + RQ_LO);
		f->q = RQ_AT(h, OFF_RQ_Q, u64);
		f->hctx = RQ_AT(h, OFF_RQ_HCTX, u64);
		f->flags = RQ_AT(h, OFF_RQ_FLAGS, u32);
		f->tag = RQ_AT(h, OFF_RQ_TAG, int);
		f->len = RQ_AT(h, OFF_RQ_LEN, u32);
	} else {
		f->q = rd_u64(rq + OFF_RQ_Q);
		f->hctx = rd_u64(rq + OFF_RQ_HCTX);
		f->flags = rd_u32(rq + OFF_RQ_FLAGS);
		f->tag = (int)rd_u32(rq + OFF_RQ_TAG);
		f->len = rd_u32(rq + OFF_RQ_LEN);
	}
}

/* The object a request belongs to: its disk plus the hardware queue number
 * (a byte offset into the gendisk: unique, and never another object's
 * pointer). Found once per hardware queue and cached by hctx; the cache is
 * checked against the request's queue, so an hctx freed and reused by
 * another disk is found again. */
static __always_inline int req_obj(struct rq_fields *f, u64 *obj, u32 *qn)
{
	struct hq_cache *c = hq_cache.lookup(&f->hctx);
	if (c && c->q == f->q) {
		*obj = c->obj;
		*qn = c->queue_num;
		return 0;
	}
	const void *disk = (const void *)rd_u64((const void *)f->q + OFF_Q_DISK);
	if (!disk || !f->hctx)
		return -1;
	struct hq_cache z = {.q = f->q};
	z.queue_num = rd_u32((const void *)f->hctx + OFF_HCTX_NUM);
	z.obj = (u64)disk + z.queue_num;
	struct hq_info hi = {.queue_num = z.queue_num, .slot = UNOBSERVED};
	bpf_probe_read_kernel_str(hi.disk, sizeof(hi.disk), disk + OFF_DISK_NAME);
	if (hq_info.update(&z.obj, &hi)) {
		/* Table full (and not ours yet): user space could never name
		 * the queue, so its events go as lost, as the virtio program's
		 * do when vq_info is full. */
		count_lost(1);
		return -1;
	}
	/* A full cache only costs this slow path again (hq_info's update of
	 * a key it holds still succeeds). */
	hq_cache.update(&f->hctx, &z);
	*obj = z.obj;
	*qn = z.queue_num;
	return 0;
}

#ifdef VTRACE_AGG
/* Counting under tp_btf: each hardware queue's counters, latency buckets and
 * in-flight clocks in arrays at its own slot, found by plain loads from the
 * typed request (its disk, queue id and queue number), where the hash way
 * costs three hash operations a request (hq_cache, counts, and flight or lat:
 * 31 to 37 ns each, bench/bpf_ops.py) and an array slot about 2. A slot is
 * claimed once for all CPUs (hq_owner, compare-and-swap) by the first queue
 * that lands on it; a queue that finds its slot taken, or a tag past
 * HQ_TAGS, goes the hash way as before. User space reads a queue's slot from
 * hq_info (vtrace/live/counts.py hq_slot_counts). */
#define HQ_SLOTS 64
#define HQ_TAGS 1024
#define HQ_BUCKETS 64		/* log2 ns buckets, as log2_ns() gives them */

struct hq_slot {		/* per CPU */
	u64 n[2];		/* requests issued (AVAIL), completed (USED) */
	u64 bytes[2];		/* the bytes `counts` would sum for them */
	struct vtrace_lval lat[HQ_BUCKETS];
};
BPF_PERCPU_ARRAY(hq_slots, struct hq_slot, HQ_SLOTS);
BPF_ARRAY(hq_owner, u64, HQ_SLOTS);			/* the queue (obj) holding each slot */
BPF_ARRAY(hq_flight, u64, HQ_SLOTS * HQ_TAGS);		/* issue clock by (slot, tag), 0 once completed */

/* The queue's slot, claimed if free: its index, or -1 (the hash way). */
static __always_inline int hq_claim(const u8 *disk, u64 obj, u32 qn, u32 i)
{
	u64 *owner = hq_owner.lookup(&i);
	if (!owner)
		return -1;
	if (*owner == obj)
		return i;
	if (*owner || __sync_val_compare_and_swap(owner, 0, obj) != 0)
		return -1;	/* another queue's */
	struct hq_info hi = {.queue_num = qn, .slot = i};
	bpf_probe_read_kernel_str(hi.disk, sizeof(hi.disk), disk + OFF_DISK_NAME);
	if (hq_info.update(&obj, &hi)) {
		*owner = 0;	/* hq_info is full: the hash way counts it lost */
		return -1;
	}
	return i;
}

/* Count a request (used: its completion) in its queue's slot. 1 when done
 * (counted, or not one of ours), 0 when the caller must go the hash way. */
static __always_inline int slot_count(struct rq_fields *f, int used, u32 bytes)
{
	const u8 *q = (const u8 *)f->q, *hctx = (const u8 *)f->hctx;
	if (f->tag < 0 || !q || !hctx)
		return 1;	/* no tag or no hardware queue: not a request of a blk-mq disk */
	const u8 *disk = *(const u8 **)(q + OFF_Q_DISK);
	if (!disk)
		return 1;
	u32 qn = *(const u32 *)(hctx + OFF_HCTX_NUM);
	u32 id = *(const u32 *)(q + OFF_Q_ID);
	u64 obj = (u64)disk + qn;
	int i = hq_claim(disk, obj, qn, (id * 8 + qn) & (HQ_SLOTS - 1));
	if (i < 0 || f->tag >= HQ_TAGS)
		return 0;
	u32 k = i;
	struct hq_slot *s = hq_slots.lookup(&k);
	u32 fi = (u32)i * HQ_TAGS + (u32)f->tag;
	u64 *t0 = hq_flight.lookup(&fi);
	if (!s || !t0)
		return 0;
	s->n[used]++;
	s->bytes[used] += bytes;
	u64 now = bpf_ktime_get_ns();
	if (!used) {
		if (*t0)
			count_rare(obj, qn, 0);	/* the tag is in flight already: keep its first clock */
		else
			*t0 = now;
		return 1;
	}
	if (!*t0) {
		count_rare(obj, qn, 1);		/* issued before vtrace attached */
		return 1;
	}
	u64 d = now > *t0 ? now - *t0 : 0;
	*t0 = 0;
	/* log2_ns() is below 64, but its shifts by variable amounts leave 6.1's
	 * verifier no bound, and clang drops a mask it can prove idle: hide the
	 * value from clang (libbpf's barrier_var) so that the mask stays. */
	u32 b = log2_ns(d);
	asm volatile("" : "+r"(b));
	struct vtrace_lval *lv = &s->lat[b & (HQ_BUCKETS - 1)];
	lv->n++;
	lv->sum_ns += d;
	return 1;
}
#endif

/* The event for a request: its (disk, hardware queue) object and its tag as
 * the head. Descriptors and ring indices are not visible at the block layer.
 * Nonzero when the request has no tag or no queue (not one of ours), or
 * its queue cannot be named (counted lost). */
static __always_inline int rq_event(struct rq_fields *f, struct vtrace_event *e, u8 kind)
{
	u64 obj;
	u32 qn;
	if (f->tag < 0 || !f->q || req_obj(f, &obj, &qn))
		return -1;
	event_head(e, kind, VTRACE_LAYER_VIRTIO_GUEST, obj, qn);
	e->id = f->tag;
	e->aux2 = UNOBSERVED;
	e->arg = UNOBSERVED;
	return 0;
}

#ifdef HAVE_block_rq_issue
#undef TP_POINT
#define TP_POINT TP_BTF_block_rq_issue
#include "vtrace_tp.h"
TP_PROBE(block_rq_issue)
{
	struct rq_fields f;
	rq_read((const void *)TP_ARG(0), &f, TP_TYPED);
	u32 op = f.flags & REQ_OP_MASK;
#if defined(VTRACE_AGG) && TP_POINT
	if (slot_count(&f, 0, op == REQ_OP_WRITE ? f.len : 0))	/* AVAIL bytes: what the device reads */
		return 0;
#endif
	struct vtrace_event e = {};
	if (rq_event(&f, &e, VTRACE_AVAIL))
		return 0;
	/* Data the device moves: into memory for a read, out of it for a
	 * write; flush, discard and write-zeroes move none. */
	e.len = op == REQ_OP_READ ? f.len : 0;
	e.aux = op == REQ_OP_WRITE ? f.len : 0;
	emit(&e);
	return 0;
}
#endif

#ifdef HAVE_block_rq_complete
#undef TP_POINT
#define TP_POINT TP_BTF_block_rq_complete
#include "vtrace_tp.h"
TP_PROBE(block_rq_complete)
{
	struct rq_fields f;
	rq_read((const void *)TP_ARG(0), &f, TP_TYPED);
	/* used.len counts what the device wrote into memory: a read's data. */
	u32 len = (f.flags & REQ_OP_MASK) == REQ_OP_READ ? (u32)TP_ARG(2) : 0;
#if defined(VTRACE_AGG) && TP_POINT
	if (slot_count(&f, 1, len))
		return 0;
#endif
	struct vtrace_event e = {};
	if (rq_event(&f, &e, VTRACE_USED))
		return 0;
	e.len = len;
	emit(&e);
	return 0;
}
#endif
