// SPDX-License-Identifier: GPL-2.0
/*
 * IOMMU map/unmap (include/trace/events/iommu.h: map(iova, paddr, size),
 * unmap(iova, size, unmapped_size)). The tracepoints do not carry the
 * mapping's prot flags (IOMMU_CACHE among them): prot is UNOBSERVED here and
 * needs a function probe on iommu_map() where the kernel allows one.
 * Mappings for a VM are made in its VMM's context (VFIO_IOMMU_MAP_DMA), so
 * the object is the VMM's tgid, tagged "IOM".
 */
#include "vtrace.h"

#define IOMMU_OBJ(tgid) (0x494f4d0000000000ULL | (u64)(tgid))

#include "vtrace_emit.inc"	/* lost, events, emit(): pasted in by the loader */
/* TRACEPOINT_PROBE names its context `args`: those bodies call emit_to(args, ...) */

static __always_inline void head(struct vtrace_event *e, u8 kind, u64 iova)
{
	event_head(e, kind, VTRACE_LAYER_IOMMU, 0, VTRACE_NO_QUEUE);
	e->obj = IOMMU_OBJ(e->pid);
	e->id = (u32)iova;
	e->aux2 = iova >> 32;
}

#ifdef HAVE_map
TRACEPOINT_PROBE(iommu, map)
{
	struct vtrace_event e = {};
	head(&e, VTRACE_DMA_MAP, args->iova);
	e.aux = UNOBSERVED;	/* prot */
	e.arg = args->size;
	emit_to(args, &e);
	return 0;
}
#endif

#ifdef HAVE_unmap
TRACEPOINT_PROBE(iommu, unmap)
{
	struct vtrace_event e = {};
	head(&e, VTRACE_DMA_UNMAP, args->iova);
	e.arg = args->unmapped_size;
	emit_to(args, &e);
	return 0;
}
#endif
