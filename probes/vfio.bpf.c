// SPDX-License-Identifier: GPL-2.0
/*
 * VFIO: type1 DMA map/unmap and migration state changes.
 *   static long vfio_iommu_type1_ioctl(void *iommu_data, unsigned int cmd, unsigned long arg)
 *       VFIO_IOMMU_MAP_DMA / UNMAP_DMA (include/uapi/linux/vfio.h): the request is
 *       read from the VMM's memory at entry, reported when the ioctl returns 0
 *   int vfio_mig_get_next_state(struct vfio_device *device, enum vfio_device_mig_state cur,
 *       enum vfio_device_mig_state new, enum vfio_device_mig_state *next)
 *       drivers/vfio/vfio_main.c: every migration state transition a driver steps through
 */
#include <uapi/linux/ptrace.h>
#include "vtrace.h"

#define VFIO_OBJ(tgid) (0x5646490000000000ULL | (u64)(tgid))	/* "VFI" + tgid */
#define VFIO_IOMMU_MAP_DMA 0x3b71U	/* _IO(VFIO_TYPE, VFIO_BASE + 13) */
#define VFIO_IOMMU_UNMAP_DMA 0x3b72U	/* _IO(VFIO_TYPE, VFIO_BASE + 14) */

struct req {
	u64 iova;
	u64 size;
	u32 cmd;
	u32 flags;
};

BPF_HASH(reqs, u32, struct req, 1024);
#include "vtrace_emit.inc"	/* lost, events, emit(): pasted in by the loader */

#ifdef HAVE_dma
#undef FN_POINT
#define FN_POINT FENTRY_dma
#include "vtrace_fn.h"
int dma_entry(FN_CTX *ctx)
{
	u32 cmd = ARG(2);
	const void *arg = (const void *)ARG(3);
	struct req r = {};
	u32 hdr[2] = {};	/* argsz, flags */
	if (cmd != VFIO_IOMMU_MAP_DMA && cmd != VFIO_IOMMU_UNMAP_DMA)
		return 0;
	if (bpf_probe_read_user(hdr, sizeof(hdr), arg))
		return 0;
	r.cmd = cmd;
	r.flags = hdr[1];
	/* map: {argsz, flags, vaddr, iova, size}; unmap: {argsz, flags, iova, size} */
	u32 at = cmd == VFIO_IOMMU_MAP_DMA ? 16 : 8;
	bpf_probe_read_user(&r.iova, sizeof(r.iova), arg + at);
	bpf_probe_read_user(&r.size, sizeof(r.size), arg + at + 8);
	u32 tid = bpf_get_current_pid_tgid();
	reqs.update(&tid, &r);
	return 0;
}

int dma_return(FN_CTX *ctx)
{
	u32 tid = bpf_get_current_pid_tgid();
	struct req *r = reqs.lookup(&tid);
	if (!r)
		return 0;
	struct req q = *r;
	reqs.delete(&tid);
	if (RETVAL != 0)
		return 0;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct vtrace_event e = {};
	e.ts = bpf_ktime_get_ns();
	e.obj = VFIO_OBJ(tgid);
	e.pid = tgid;
	e.kind = q.cmd == VFIO_IOMMU_MAP_DMA ? VTRACE_DMA_MAP : VTRACE_DMA_UNMAP;
	e.layer = VTRACE_LAYER_VFIO;
	e.queue = VTRACE_NO_QUEUE;
	e.id = (u32)q.iova;
	e.aux2 = q.iova >> 32;
	if (q.cmd == VFIO_IOMMU_MAP_DMA)
		e.aux = q.flags;	/* VFIO_DMA_MAP_FLAG_READ 1, WRITE 2 */
	e.arg = q.size;
	emit(&e);
	return 0;
}
#endif

#ifdef HAVE_migration
#undef FN_POINT
#define FN_POINT FENTRY_migration
#include "vtrace_fn.h"
int migration_entry(FN_CTX *ctx)
{
	struct vtrace_event e = {};
	e.ts = bpf_ktime_get_ns();
	e.obj = ARG(1);	/* struct vfio_device * */
	e.pid = bpf_get_current_pid_tgid() >> 32;
	e.kind = VTRACE_MIGRATION_STATE;
	e.layer = VTRACE_LAYER_VFIO;
	e.queue = VTRACE_NO_QUEUE;
	e.id = ARG(3);	/* new */
	e.aux = ARG(2);	/* cur */
	emit(&e);
	return 0;
}
#endif
