// SPDX-License-Identifier: GPL-2.0
/*
 * VFIO: type1 DMA map/unmap and migration state changes.
 *   static long vfio_iommu_type1_ioctl(void *iommu_data, unsigned int cmd, unsigned long arg)
 *       VFIO_IOMMU_MAP_DMA / UNMAP_DMA (include/uapi/linux/vfio.h): the request is
 *       read from the VMM's memory at entry, reported when the ioctl returns 0
 *   int vfio_mig_get_next_state(struct vfio_device *device, enum vfio_device_mig_state cur,
 *       enum vfio_device_mig_state new, enum vfio_device_mig_state *next)
 *       drivers/vfio/vfio_main.c: the kernel's migration FSM, which a driver asks
 *       for each arc towards the state user space requested (mlx5, hisi_acc,
 *       pds, virtio, mtty all do); reported at return with the arc it chose
 *       (*next) or its errno (a state the device does not offer: -EINVAL)
 * What a VMM does with an assigned device, through the three kinds of VFIO fd
 * (Documentation/driver-api/vfio.rst), each file_operations handler:
 *   long vfio_fops_unl_ioctl(struct file *, unsigned int cmd, unsigned long arg)        container
 *   long vfio_group_fops_unl_ioctl(struct file *, unsigned int cmd, unsigned long arg)  group
 *   long vfio_device_fops_unl_ioctl(struct file *, unsigned int cmd, unsigned long arg) device
 *   ssize_t vfio_device_fops_read/write(struct file *, char __user *, size_t, loff_t *ppos)
 *   int vfio_device_fops_mmap(struct file *, struct vm_area_struct *)
 * A device fd's file offset names the region in its top bits: vfio-pci's
 * VFIO_PCI_OFFSET_SHIFT (40) splits it into region index and offset
 * (drivers/vfio/pci/vfio_pci_core.c vfio_pci_rw; BARs 0-5, ROM 6, config 7).
 */
#include <uapi/linux/ptrace.h>
#include "vtrace.h"

#define VFIO_OBJ(tgid) (0x5646490000000000ULL | (u64)(tgid))	/* "VFI" + tgid */
#define VFIO_IOMMU_MAP_DMA 0x3b71U	/* _IO(VFIO_TYPE, VFIO_BASE + 13) */
#define VFIO_IOMMU_UNMAP_DMA 0x3b72U	/* _IO(VFIO_TYPE, VFIO_BASE + 14) */
#define VFIO_PCI_OFFSET_SHIFT 40
#define PAGE_SHIFT 12
#define U32_MAX_ 0xffffffffULL

enum { FD_CONTAINER, FD_GROUP, FD_DEVICE };	/* VFIO_IOCTL aux: which fd */
enum { P_CONTAINER, P_GROUP, P_DEVICE, P_READ, P_WRITE, P_MMAP, P_MIGRATION };	/* call_key() points */

struct call {
	u64 ts;
	u64 a;		/* ioctl: cmd; read/write: *ppos; mmap: the region's offset; migration: device */
	u64 b;		/* read/write: count; mmap: length; migration: next (a pointer) */
	u64 c;		/* migration: cur << 32 | new */
};

struct req {
	u64 iova;
	u64 size;
	u32 cmd;
	u32 flags;
};

BPF_HASH(reqs, u32, struct req, 1024);
BPF_HASH(calls, u64, struct call, 1024);	/* (tid, point) -> entry state for the return probe */
#include "vtrace_emit.inc"	/* lost, events, emit(): pasted in by the loader */

#include "vtrace_calls.inc"	/* put_call(), take_call(): pasted in by the loader */

static __always_inline void save(u32 point, u64 a, u64 b)
{
	struct call c = {.ts = bpf_ktime_get_ns(), .a = a, .b = b};
	put_call(point, &c);
}

static __always_inline void vfio_head(struct vtrace_event *e, u8 kind)
{
	event_head(e, kind, VTRACE_LAYER_VFIO, 0, VTRACE_NO_QUEUE);
	e->obj = VFIO_OBJ(e->pid);
}

/* An ioctl returned: its cmd, which fd, errno (0 = success), the return
 * value when not an error (GET_DEVICE_FD: the new fd), latency. */
static __always_inline int ioctl_done(void *ctx, u32 point, u32 fd_kind, long ret)
{
	struct call c;
	if (take_call(point, &c))
		return 0;
	struct vtrace_event e = {};
	vfio_head(&e, VTRACE_VFIO_IOCTL);
	u64 ns = e.ts - c.ts;
	e.id = c.a;
	e.aux = fd_kind;
	e.len = ret < 0 ? -ret : 0;
	e.arg = ret < 0 ? 0 : ret;
	e.aux2 = ns > U32_MAX_ ? U32_MAX_ : ns;
	emit(&e);
	return 0;
}

/* A region read or write returned: region index, offset in it, bytes done, errno. */
static __always_inline int rw_done(void *ctx, u32 point, long ret)
{
	struct call c;
	if (take_call(point, &c))
		return 0;
	struct vtrace_event e = {};
	vfio_head(&e, VTRACE_VFIO_REGION_RW);
	e.id = c.a >> VFIO_PCI_OFFSET_SHIFT;
	e.arg = c.a & ((1ULL << VFIO_PCI_OFFSET_SHIFT) - 1);
	e.aux = point == P_WRITE;
	e.len = ret < 0 ? 0 : ret;
	e.aux2 = ret < 0 ? -ret : 0;
	emit(&e);
	return 0;
}

#define IOCTL_POINT(name, point, fd_kind)					\
int name##_entry(FN_CTX *ctx)							\
{										\
	save(point, (u32)ARG(2), 0);						\
	return 0;								\
}										\
int name##_return(FN_CTX *ctx)							\
{										\
	return ioctl_done(ctx, point, fd_kind, RETVAL);				\
}

#define RW_POINT(name, point)							\
int name##_entry(FN_CTX *ctx)							\
{										\
	u64 pos = 0;								\
	bpf_probe_read_kernel(&pos, sizeof(pos), (const void *)ARG(4));	\
	save(point, pos, ARG(3));						\
	return 0;								\
}										\
int name##_return(FN_CTX *ctx)							\
{										\
	return rw_done(ctx, point, RETVAL);					\
}

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
	event_head(&e, q.cmd == VFIO_IOMMU_MAP_DMA ? VTRACE_DMA_MAP : VTRACE_DMA_UNMAP, VTRACE_LAYER_VFIO,
		   VFIO_OBJ(tgid), VTRACE_NO_QUEUE);
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
struct mig_dev {
	char name[32];
};

/* vfio_device -> the name of the device it drives (read by user space). A
 * table full only costs the name: user space falls back to the pointer. */
BPF_HASH(mig_info, u64, struct mig_dev, 256);

int migration_entry(FN_CTX *ctx)
{
	/* no clock: the return reports the arc with its own time stamp */
	struct call c = {.a = ARG(1), .c = ((u64)(u32)ARG(2) << 32) | (u32)ARG(3)};
	if (!mig_info.lookup(&c.a)) {
		struct mig_dev d = {};
		const void *dev = (const void *)rd_u64((const void *)c.a + OFF_VFIO_DEVICE_DEV);
		const void *name = dev ? (const void *)rd_u64(dev + OFF_DEVICE_NAME) : 0;
		if (name)
			bpf_probe_read_kernel_str(d.name, sizeof(d.name), name);
		mig_info.update(&c.a, &d);
	}
#if FN_POINT
	/* `next` points to an enum, and 6.1's verifier lets a tracing program
	 * take only pointers to structs from its context ("invalid bpf_context
	 * access off=24", measured in the vmlab): bpf_get_func_arg (5.17+)
	 * reads it whatever its type. */
	bpf_get_func_arg(ctx, 3, &c.b);
#else
	c.b = ARG(4);
#endif
	put_call(P_MIGRATION, &c);
	return 0;
}

/* One arc asked of the FSM: the device (struct vfio_device *), its state then,
 * the state user space requested, and what the FSM answered: the next state
 * to step to, or an errno (next UNOBSERVED). */
int migration_return(FN_CTX *ctx)
{
	struct call c;
	if (take_call(P_MIGRATION, &c))
		return 0;
	int ret = RETVAL;
	struct vtrace_event e = {};
	event_head(&e, VTRACE_MIGRATION_STATE, VTRACE_LAYER_VFIO, c.a, VTRACE_NO_QUEUE);
	e.aux = c.c >> 32;	/* cur */
	e.id = (u32)c.c;	/* new */
	e.aux2 = ret ? UNOBSERVED : rd_u32((const void *)c.b);
	e.len = ret < 0 ? -ret : 0;
	emit(&e);
	return 0;
}
#endif

/* The macros hold no map calls (bcc cannot rewrite those in a macro): the
 * helpers above do the map work. */
#ifdef HAVE_container_ioctl
#undef FN_POINT
#define FN_POINT FENTRY_container_ioctl
#include "vtrace_fn.h"
IOCTL_POINT(container_ioctl, P_CONTAINER, FD_CONTAINER)
#endif

#ifdef HAVE_group_ioctl
#undef FN_POINT
#define FN_POINT FENTRY_group_ioctl
#include "vtrace_fn.h"
IOCTL_POINT(group_ioctl, P_GROUP, FD_GROUP)
#endif

#ifdef HAVE_device_ioctl
#undef FN_POINT
#define FN_POINT FENTRY_device_ioctl
#include "vtrace_fn.h"
IOCTL_POINT(device_ioctl, P_DEVICE, FD_DEVICE)
#endif

#ifdef HAVE_region_read
#undef FN_POINT
#define FN_POINT FENTRY_region_read
#include "vtrace_fn.h"
RW_POINT(region_read, P_READ)
#endif

#ifdef HAVE_region_write
#undef FN_POINT
#define FN_POINT FENTRY_region_write
#include "vtrace_fn.h"
RW_POINT(region_write, P_WRITE)
#endif

#ifdef HAVE_mmap
#undef FN_POINT
#define FN_POINT FENTRY_mmap
#include "vtrace_fn.h"
int mmap_entry(FN_CTX *ctx)
{
	const void *vma = (const void *)ARG(2);
	u64 start = rd_u64(vma + OFF_VMA_START), end = rd_u64(vma + OFF_VMA_END);
	save(P_MMAP, rd_u64(vma + OFF_VMA_PGOFF) << PAGE_SHIFT, end - start);
	return 0;
}

/* The region, the mapping's length and its offset in the region, errno. */
int mmap_return(FN_CTX *ctx)
{
	struct call c;
	if (take_call(P_MMAP, &c))
		return 0;
	long ret = RETVAL;
	struct vtrace_event e = {};
	vfio_head(&e, VTRACE_VFIO_MMAP);
	e.id = c.a >> VFIO_PCI_OFFSET_SHIFT;
	e.aux = (c.a & ((1ULL << VFIO_PCI_OFFSET_SHIFT) - 1)) >> PAGE_SHIFT;
	e.arg = c.b;
	e.len = ret < 0 ? -ret : 0;
	emit(&e);
	return 0;
}
#endif
