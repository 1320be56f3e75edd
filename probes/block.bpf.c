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
 * (include/trace/events/block.h). Offsets from BTF:
 *   OFF_RQ_Q, OFF_RQ_HCTX, OFF_RQ_FLAGS, OFF_RQ_TAG, OFF_RQ_LEN   struct request
 *   OFF_HCTX_NUM                                                  struct blk_mq_hw_ctx
 *   OFF_Q_DISK                                                    struct request_queue
 *   OFF_DISK_NAME                                                 struct gendisk
 */
#include "vtrace.h"

#define REQ_OP_MASK 0xff	/* include/linux/blk_types.h */
#define REQ_OP_READ 0
#define REQ_OP_WRITE 1

struct hq_info {
	u32 queue_num;
	char disk[32];
};

BPF_HASH(hq_info, u64, struct hq_info, 1024);
#include "vtrace_emit.inc"	/* lost, events, emit(): pasted in by the loader */

/* The object a request belongs to: its disk plus the hardware queue number
 * (a byte offset into the gendisk: unique, and never another object's pointer). */
static __always_inline int req_obj(const void *rq, u64 *obj, u32 *qn)
{
	const void *q = (const void *)rd_u64(rq + OFF_RQ_Q);
	const void *disk = (const void *)rd_u64(q + OFF_Q_DISK);
	const void *hctx = (const void *)rd_u64(rq + OFF_RQ_HCTX);
	if (!disk || !hctx)
		return -1;
	*qn = rd_u32(hctx + OFF_HCTX_NUM);
	*obj = (u64)disk + *qn;
	struct hq_info *hi = hq_info.lookup(obj);
	if (!hi) {
		struct hq_info z = {};
		z.queue_num = *qn;
		bpf_probe_read_kernel_str(z.disk, sizeof(z.disk), disk + OFF_DISK_NAME);
		hq_info.insert(obj, &z);
	}
	return 0;
}

/* The event for a request: its (disk, hardware queue) object and its tag as
 * the head. Descriptors and ring indices are not visible at the block layer.
 * Nonzero when the request has no tag or no queue (not one of ours). */
static __always_inline int rq_event(const void *rq, struct vtrace_event *e, u8 kind)
{
	int tag = (int)rd_u32(rq + OFF_RQ_TAG);
	u64 obj;
	u32 qn;
	if (tag < 0 || req_obj(rq, &obj, &qn))
		return -1;
	event_head(e, kind, VTRACE_LAYER_VIRTIO_GUEST, obj, qn);
	e->id = tag;
	e->aux2 = UNOBSERVED;
	e->arg = UNOBSERVED;
	return 0;
}

#ifdef HAVE_block_rq_issue
RAW_TRACEPOINT_PROBE(block_rq_issue)
{
	const void *rq = (const void *)ctx->args[0];
	struct vtrace_event e = {};
	if (rq_event(rq, &e, VTRACE_AVAIL))
		return 0;
	u32 len = rd_u32(rq + OFF_RQ_LEN);
	u32 op = rd_u32(rq + OFF_RQ_FLAGS) & REQ_OP_MASK;
	/* Data the device moves: into memory for a read, out of it for a
	 * write; flush, discard and write-zeroes move none. */
	e.len = op == REQ_OP_READ ? len : 0;
	e.aux = op == REQ_OP_WRITE ? len : 0;
	emit(&e);
	return 0;
}
#endif

#ifdef HAVE_block_rq_complete
RAW_TRACEPOINT_PROBE(block_rq_complete)
{
	const void *rq = (const void *)ctx->args[0];
	struct vtrace_event e = {};
	if (rq_event(rq, &e, VTRACE_USED))
		return 0;
	/* used.len counts what the device wrote into memory: a read's data. */
	e.len = (rd_u32(rq + OFF_RQ_FLAGS) & REQ_OP_MASK) == REQ_OP_READ ? (u32)ctx->args[2] : 0;
	emit(&e);
	return 0;
}
#endif
