// SPDX-License-Identifier: GPL-2.0
/*
 * Host side: the vhost ring data path and lifecycle (drivers/vhost/vhost.c,
 * vhost_net.c, vsock.c, vdpa.c) through fentry/fexit or kprobes (one source,
 * probes/vtrace_fn.h). Function signatures:
 *   int  vhost_get_vq_desc(struct vhost_virtqueue *vq, struct iovec iov[],
 *            unsigned int iov_size, unsigned int *out_num, unsigned int *in_num,
 *            struct vhost_log *log, unsigned int *log_num)      -> head, or vq->num when empty
 *   int  vhost_add_used_n(struct vhost_virtqueue *vq, struct vring_used_elem *heads,
 *            unsigned int count)                                (vhost_add_used calls it)
 *   bool vhost_notify(struct vhost_dev *dev, struct vhost_virtqueue *vq)   static: the
 *            signal decision. GCC may clone it with dev dropped (Debian 6.1:
 *            vhost_notify.constprop.0(vq)), so the entry tells the layouts apart
 *   bool vhost_enable_notify(dev, vq), void vhost_disable_notify(dev, vq)
 *   int  vhost_poll_wakeup(wait_queue_entry_t *wait, unsigned mode, int sync, void *key)
 *            an eventfd or socket woke a vhost_poll (poll->wait); it queues the
 *            work when key & poll->mask. The poll is embedded in its vq (vq->poll)
 *            or in a device (socket polls): told apart by vq->dev == poll->dev
 *   long vhost_vring_ioctl(struct vhost_dev *d, unsigned int ioctl, void __user *argp)
 *   void vhost_dev_reset_owner(struct vhost_dev *dev, struct vhost_iotlb *umem)
 *   long vhost_dev_set_owner(struct vhost_dev *dev)    every device's VHOST_SET_OWNER
 *   void vhost_dev_cleanup(struct vhost_dev *dev)      the device lets its owner go:
 *            its fd closed (vhost_net_release, vhost_vsock_dev_release: the VMM
 *            exited or closed it) or RESET_OWNER; dev->vqs still valid at entry
 *   long vhost_vdpa_unlocked_ioctl(struct file *filep, unsigned int cmd, unsigned long arg)
 *            (drivers/vhost/vdpa.c, module vhost_vdpa) SET_VRING_ENABLE, SUSPEND
 *            (6.3+), RESUME (6.5+); filep->private_data is the struct vhost_vdpa
 *   long vhost_net_ioctl(struct file *f, unsigned int ioctl, unsigned long arg)
 *            (drivers/vhost/net.c, module vhost_net; vhost_net_set_backend is
 *            inlined into it) VHOST_NET_SET_BACKEND: f->private_data is the
 *            struct vhost_net, its dev the vhost_dev; arg a struct vhost_vring_file
 *   long vhost_vsock_dev_ioctl(struct file *f, unsigned int ioctl, unsigned long arg)
 *            (drivers/vhost/vsock.c, module vhost_vsock) VHOST_VSOCK_SET_GUEST_CID:
 *            f->private_data is the struct vhost_vsock (dev, guest_cid)
 * Who a device is beyond its queues (vtrace/live/identity.py reads dev_info):
 * when its owner took it (SET_OWNER: the order the VMM opened its devices in),
 * its backend (vhost-net: the tap fd of SET_BACKEND, named from the VMM's
 * /proc/PID/fdinfo; vhost-vsock: the guest CID). dev_gen counts the changes,
 * so user space reads dev_info again only when something changed.
 * Offsets come from the vhost module's BTF (-D OFF_*), the ioctl numbers
 * from include/uapi/linux/vhost.h.
 */
#include <uapi/linux/ptrace.h>
#include "vtrace.h"

#define MAX_VQS 8		/* net: 2 per pair; vsock 2 (+event); dev->vqs scan bound */
#define MAX_USED 64		/* vring_used_elem per vhost_add_used_n call, beyond that: lost */
#define VHOST_SET_VRING_BASE 0x4008af12U	/* _IOW(0xAF, 0x12, struct vhost_vring_state) */
#define VHOST_GET_VRING_BASE 0xc008af12U	/* _IOWR(0xAF, 0x12, ...) */
#define VHOST_VDPA_SET_VRING_ENABLE 0x4008af75U	/* _IOW(0xAF, 0x75, struct vhost_vring_state) */
#define VHOST_VDPA_SUSPEND 0xaf7dU		/* _IO(0xAF, 0x7D) */
#define VHOST_VDPA_RESUME 0xaf7eU		/* _IO(0xAF, 0x7E) */
#define VHOST_NET_SET_BACKEND 0x4008af30U	/* _IOW(0xAF, 0x30, struct vhost_vring_file) */
#define VHOST_VSOCK_SET_GUEST_CID 0x4008af60U	/* _IOW(0xAF, 0x60, __u64) */

struct vq_info {
	u64 dev;
	u64 handle_kick;	/* names the driver and the queue role (kallsyms) */
	u64 features;		/* vq->acked_features when first seen */
	u64 first_ns;		/* when first seen (bpf_ktime_get_ns) */
	u32 index;
	u32 num;
	u32 tgid;		/* the task that first touched it: a vhost worker "vhost-<owner>" */
	u32 guest_cid;		/* read as a struct vhost_vsock's (where the vsock_ioctl point's
				 * offsets are in): meaningful only for a vsock device's queue */
	char comm[16];
};

struct dev_info {
	u64 owned_ns;		/* its SET_OWNER (bpf_ktime_get_ns); 0: not seen (owned before vtrace attached) */
	s32 backend_fd;		/* vhost-net: the fd the last SET_BACKEND that set one passed; -1 none */
	u32 fd_tgid;		/* whose fd table backend_fd is in */
	u32 tgid;		/* the owner (SET_OWNER's caller), or the first backend setter's */
	u32 guest_cid;		/* vhost-vsock: what SET_GUEST_CID set; 0 none */
	u32 pid;		/* that caller's thread: the <pid> of its worker's name vhost-<pid> */
	u32 pad;
};

struct call {
	u64 a0, a1, a2, a3, a4;
};

BPF_HASH(vq_info, u64, struct vq_info, 4096);
BPF_HASH(dev_info, u64, struct dev_info, 4096);	/* struct vhost_dev * -> who it is */
BPF_ARRAY(dev_gen, u64, 1);			/* dev_info changes so far */
BPF_HASH(calls, u64, struct call, 4096);	/* (tid, point) -> entry args for the return probe */
#include "vtrace_emit.inc"	/* lost, events, emit(): pasted in by the loader */

#include "vtrace_calls.inc"	/* put_call(), take_call(): pasted in by the loader */

/* dev->vqs[0..MAX_VQS) in one read; returns dev->nvqs. Slots past nvqs are
 * the caller's to ignore: the array is a kmalloc of nvqs pointers, reading on
 * is harmless, and a read that faults is redone for the 2 every device has. */
static __always_inline u32 read_vqs(const void *dev, u64 *slot)
{
	const void *vqs = (const void *)rd_u64(dev + OFF_DEV_VQS);
	if (bpf_probe_read_kernel(slot, MAX_VQS * sizeof(u64), vqs))
		bpf_probe_read_kernel(slot, 2 * sizeof(u64), vqs);
	return rd_u32(dev + OFF_DEV_NVQS);
}

/* Who a vq is, once: its device, index in dev->vqs, ring size, kick handler. */
static __always_inline struct vq_info *vq_seen(const void *vq)
{
	u64 key = (u64)vq;
	struct vq_info *vi = vq_info.lookup(&key);
	if (vi)
		return vi;
	struct vq_info z = {};
	const void *dev = (const void *)rd_u64(vq + OFF_VQ_DEV);
	z.dev = (u64)dev;
	z.num = rd_u32(vq + OFF_VQ_NUM);
	z.handle_kick = rd_u64(vq + OFF_VQ_HANDLE_KICK);
	z.features = rd_u64(vq + OFF_VQ_ACKED_FEATURES);
	z.index = 0xffff;
	/* The index: where dev->vqs[] points at this vq. One read of the whole
	 * slot array and constant-index compares that rejoin at once: a loop of
	 * reads and early exits here made the 6.1 verifier give up ("sequence of
	 * 8193 jumps is too complex", tests/vmlab). */
	u64 slot[MAX_VQS] = {};
	u32 nvqs = read_vqs(dev, slot);
	u32 idx = 0xffff;
#pragma clang loop unroll(full)
	for (int i = MAX_VQS - 1; i >= 0; i--)
		idx = (i < nvqs && slot[i] == key) ? i : idx;
	z.index = idx;
	z.tgid = bpf_get_current_pid_tgid() >> 32;
	z.first_ns = bpf_ktime_get_ns();
#ifdef OFF_VSOCK_GUEST_CID
	/* container_of(dev, struct vhost_vsock, dev)->guest_cid: a device set up
	 * before vtrace attached has its CID here, never in a SET_GUEST_CID */
	z.guest_cid = rd_u32((const void *)dev - OFF_VSOCK_DEV + OFF_VSOCK_GUEST_CID);
#endif
	bpf_get_current_comm(z.comm, sizeof(z.comm));
	vq_info.insert(&key, &z);
	return vq_info.lookup(&key);
}

/* dev_info changed: user space reads it again (vtrace/live/identity.py). */
static __always_inline void dev_changed(void)
{
	u32 zero = 0;
	u64 *g = dev_gen.lookup(&zero);
	if (g)
		__sync_fetch_and_add(g, 1);
}

/* The device's dev_info, made (SET_OWNER not seen) if it has none; NULL when the map is full. */
static __always_inline struct dev_info *dev_seen(u64 dev)
{
	struct dev_info *d = dev_info.lookup(&dev);
	if (d)
		return d;
	struct dev_info z = {};
	u64 id = bpf_get_current_pid_tgid();
	z.backend_fd = -1;
	z.tgid = id >> 32;
	z.pid = (u32)id;
	dev_info.insert(&dev, &z);
	return dev_info.lookup(&dev);
}

static __always_inline void head(struct vtrace_event *e, u8 kind, const void *vq, struct vq_info *vi)
{
	event_head(e, kind, VTRACE_LAYER_VHOST, (u64)vq, vi ? vi->index : VTRACE_NO_QUEUE);
}

#ifdef HAVE_fetch
#undef FN_POINT
#define FN_POINT FENTRY_fetch
#include "vtrace_fn.h"
int fetch_entry(FN_CTX *ctx)
{
	struct call c = {};
	c.a0 = ARG(1);	/* vq */
	c.a3 = ARG(4);	/* out_num */
	c.a4 = ARG(5);	/* in_num */
	put_call(1, &c);
	return 0;
}

int fetch_return(FN_CTX *ctx)
{
	struct call a;
	if (take_call(1, &a))
		return 0;
	const void *vq = (const void *)a.a0;
	u32 out = rd_u32((const void *)a.a3), in = rd_u32((const void *)a.a4);
	int headid = RETVAL;
	struct vq_info *vi = vq_seen(vq);
	if (headid < 0 || !vi || headid >= vi->num)
		return 0;	/* an error, or nothing available (head == vq->num) */
	struct vtrace_event e = {};
	head(&e, VTRACE_FETCH, vq, vi);
	e.id = headid;
	e.len = UNOBSERVED;	/* byte counts need the iov walk: not read here */
	e.aux = UNOBSERVED;
	e.aux2 = out + in;
	e.arg = rd_u16(vq + OFF_VQ_LAST_AVAIL);
	emit(&e);
	return 0;
}
#endif

#ifdef HAVE_used
#undef FN_POINT
#define FN_POINT FENTRY_used
#include "vtrace_fn.h"
int used_entry(FN_CTX *ctx)
{
	const void *vq = (const void *)ARG(1);
	const u32 *heads = (const u32 *)ARG(2);	/* struct vring_used_elem {id, len} */
	u32 count = ARG(3);
	struct vq_info *vi = vq_seen(vq);
	if (!vi) {	/* vq_info is full: these cannot be named */
		count_lost(count);
		return 0;
	}
	u16 used = rd_u16(vq + OFF_VQ_LAST_USED);
	/* A fixed trip count, fully unrolled, the bound as a guard: with an early
	 * `break` clang keeps a real loop whose exit test (i != count) the
	 * verifier cannot bound ("sequence of 8193 jumps is too complex" on
	 * 6.1, tests/vmlab). */
	u32 n = count < MAX_USED ? count : MAX_USED;
#pragma clang loop unroll(full)
	for (int i = 0; i < MAX_USED; i++) {
		if (i >= n)
			continue;
		u32 el[2] = {};
		bpf_probe_read_kernel(el, sizeof(el), heads + 2 * i);
		struct vtrace_event e = {};
		head(&e, VTRACE_USED, vq, vi);
		e.id = el[0];
		e.len = el[1];
		e.aux2 = UNOBSERVED;
		e.arg = (u16)(used + i + 1);
		emit(&e);
	}
	if (count > MAX_USED)
		count_lost(count - MAX_USED);
	return 0;
}
#endif

#ifdef HAVE_signal
#undef FN_POINT
#define FN_POINT FENTRY_signal
#include "vtrace_fn.h"
int signal_entry(FN_CTX *ctx)
{
	struct call c = {};
	/* vhost_notify(dev, vq) has vq->dev == dev; the clone's only argument is vq. */
	const void *p1 = (const void *)ARG(1), *p2 = (const void *)ARG(2);
	const void *vq = rd_u64(p2 + OFF_VQ_DEV) == (u64)p1 ? p2 : p1;
	c.a1 = (u64)vq;
	/* vhost_notify replaces signalled_used: keep the old value and validity */
	c.a2 = rd_u16(vq + OFF_VQ_SIGNALLED_USED);
	c.a3 = rd_u64(vq + OFF_VQ_SIGNALLED_VALID) & 0xff;
	put_call(2, &c);
	return 0;
}

int signal_return(FN_CTX *ctx)
{
	struct call a;
	if (take_call(2, &a))
		return 0;
	const void *vq = (const void *)a.a1;
	u32 old = a.a2, valid = a.a3;
	struct vq_info *vi = vq_seen(vq);
	struct vtrace_event e = {};
	head(&e, RETVAL & 0xff ? VTRACE_SIGNAL : VTRACE_SIGNAL_SUPPRESSED, vq, vi);
	/* The driver's avail ring lives in the VMM's memory, which the vhost
	 * worker has adopted (kthread_use_mm): used_event = avail->ring[num]. */
	const u16 *avail = (const u16 *)rd_u64(vq + OFF_VQ_AVAIL);
	u32 num = vi ? vi->num : 0;
	u16 flags = 0, used_event = 0;
	if (avail && !bpf_probe_read_user(&flags, sizeof(flags), avail))
		e.len = flags;
	else
		e.len = UNOBSERVED;
	if (avail && num && !bpf_probe_read_user(&used_event, sizeof(used_event), avail + 2 + num))
		e.id = used_event;
	else
		e.id = UNOBSERVED;
	e.aux = valid ? old : UNOBSERVED;	/* signalled_used at the previous decision */
	e.aux2 = UNOBSERVED;	/* free_descs: the driver's, which only a guest probe sees */
	e.arg = rd_u16(vq + OFF_VQ_LAST_USED);
	emit(&e);
	return 0;
}
#endif

#ifdef HAVE_notify_enable
#undef FN_POINT
#define FN_POINT FENTRY_notify_enable
#include "vtrace_fn.h"
int notify_enable_entry(FN_CTX *ctx)
{
	const void *vq = (const void *)ARG(2);
	struct vtrace_event e = {};
	head(&e, VTRACE_NOTIFY_ENABLE, vq, vq_seen(vq));
	e.id = 0;	/* device side: kicks re-enabled */
	emit(&e);
	return 0;
}
#endif

#ifdef HAVE_notify_disable
#undef FN_POINT
#define FN_POINT FENTRY_notify_disable
#include "vtrace_fn.h"
int notify_disable_entry(FN_CTX *ctx)
{
	const void *vq = (const void *)ARG(2);
	struct vtrace_event e = {};
	head(&e, VTRACE_NOTIFY_DISABLE, vq, vq_seen(vq));
	e.id = 0;
	emit(&e);
	return 0;
}
#endif

#ifdef HAVE_kick
#undef FN_POINT
#define FN_POINT FENTRY_kick
#include "vtrace_fn.h"
int kick_entry(FN_CTX *ctx)
{
	const void *poll = (const void *)ARG(1) - OFF_POLL_WAIT;
	u32 key = ARG(4);
	if (!(key & rd_u32(poll + OFF_POLL_MASK)))
		return 0;	/* not an event this poll waits for: nothing queued */
	const void *vq = poll - OFF_VQ_POLL;
	u64 pdev = rd_u64(poll + OFF_POLL_DEV);
	if (!pdev || rd_u64(vq + OFF_VQ_DEV) != pdev)
		return 0;	/* a socket poll, not a vq's kick */
	struct vq_info *vi = vq_seen(vq);
	struct vtrace_event e = {};
	head(&e, VTRACE_KICK, vq, vi);
	/* Runs in the kicking thread (a vCPU's ioeventfd, or the VMM writing the
	 * eventfd): the avail ring is in its mm. */
	const u16 *avail = (const u16 *)rd_u64(vq + OFF_VQ_AVAIL);
	u16 idx = 0;
	e.arg = avail && !bpf_probe_read_user(&idx, sizeof(idx), avail + 1) ? idx : UNOBSERVED;
	emit(&e);
	return 0;
}
#endif

/* The queue a struct vhost_vring_state {index, num} in the VMM's memory names
 * on dev (dev->vqs[index]), and its num; NULL when unreadable or out of range. */
static __always_inline const void *vring_state(const void *dev, const void *argp, u32 *num)
{
	u32 st[2] = {};
	if (bpf_probe_read_user(st, sizeof(st), argp) || st[0] >= MAX_VQS)
		return 0;
	*num = st[1];
	const void *vqs = (const void *)rd_u64(dev + OFF_DEV_VQS);
	return (const void *)rd_u64(vqs + 8 * st[0]);
}

#ifdef HAVE_vring_ioctl
#undef FN_POINT
#define FN_POINT FENTRY_vring_ioctl
#include "vtrace_fn.h"
int vring_ioctl_entry(FN_CTX *ctx)
{
	u32 ioctl = ARG(2);
	if (ioctl != VHOST_SET_VRING_BASE && ioctl != VHOST_GET_VRING_BASE)
		return 0;
	struct call c = {};
	c.a0 = ARG(1);
	c.a1 = ioctl;
	c.a2 = ARG(3);
	put_call(3, &c);
	return 0;
}

int vring_ioctl_return(FN_CTX *ctx)
{
	struct call a;
	if (take_call(3, &a))
		return 0;
	if (RETVAL != 0)
		return 0;
	u32 num = 0;
	const void *vq = vring_state((const void *)a.a0, (const void *)a.a2, &num);
	if (!vq)
		return 0;
	struct vtrace_event e = {};
	head(&e, a.a1 == VHOST_GET_VRING_BASE ? VTRACE_VRING_BASE_GET : VTRACE_VRING_BASE_SET, vq, vq_seen(vq));
	e.id = num;
	emit(&e);
	return 0;
}
#endif

/* One event per queue of a device (lifecycle that is the whole device's):
 * dev->vqs[i] is queue i, so no vq_seen() (eight of them inlined here are
 * too much for the verifier). */
static __always_inline void each_queue(void *ctx, const void *dev, u8 kind, u32 id)
{
	u64 slot[MAX_VQS] = {};
	u32 nvqs = read_vqs(dev, slot);
#pragma clang loop unroll(full)
	for (int i = 0; i < MAX_VQS; i++) {
		if (i >= nvqs)
			continue;	/* not break: see used_entry */
		struct vtrace_event e = {};
		head(&e, kind, (const void *)slot[i], 0);
		e.queue = i;
		e.id = id;
		emit_to(ctx, &e);
	}
}

#ifdef HAVE_reset_owner
#undef FN_POINT
#define FN_POINT FENTRY_reset_owner
#include "vtrace_fn.h"
int reset_owner_entry(FN_CTX *ctx)
{
	each_queue(ctx, (const void *)ARG(1), VTRACE_RESET, 0);
	return 0;
}
#endif

#ifdef HAVE_set_owner
#undef FN_POINT
#define FN_POINT FENTRY_set_owner
#include "vtrace_fn.h"
int set_owner_entry(FN_CTX *ctx)
{
	struct call c = {};
	c.a0 = ARG(1);
	put_call(4, &c);
	return 0;
}

int set_owner_return(FN_CTX *ctx)
{
	struct call a;
	if (take_call(4, &a))
		return 0;
	if (RETVAL != 0)
		return 0;	/* -EBUSY: it already had an owner, nothing changed */
	/* A new owner: the device's queues may sit where a closed device's
	 * were (the slab hands freed memory out again; the vhost lab's vsock VMM
	 * once got the net VMM's rx queue and device addresses). Forget what
	 * vq_info knew of them, so that the next touch reads who they are now;
	 * user space renames them on this event (vtrace/live/identity.py new_lives). */
	u64 slot[MAX_VQS] = {};
	u32 nvqs = read_vqs((const void *)a.a0, slot);
#pragma clang loop unroll(full)
	for (int i = 0; i < MAX_VQS; i++) {
		if (i < nvqs)
			vq_info.delete(&slot[i]);
	}
	/* When the owner took the device: the order the VMM opened its devices
	 * in (QEMU opens and owns each at once). The same owner again (after
	 * RESET_OWNER) keeps what is known, owned_ns 0 included (owned before
	 * vtrace attached); another owner's device starts anew. */
	u64 key = a.a0, id = bpf_get_current_pid_tgid();
	struct dev_info *d = dev_info.lookup(&key);
	if (!d || d->tgid != id >> 32) {
		struct dev_info z = {};
		z.owned_ns = bpf_ktime_get_ns();
		z.tgid = id >> 32;
		z.pid = (u32)id;
		z.backend_fd = -1;
		dev_info.update(&key, &z);
	}
	dev_changed();
	each_queue(ctx, (const void *)a.a0, VTRACE_SET_OWNER, 0);
	return 0;
}
#endif

#ifdef HAVE_release
#undef FN_POINT
#define FN_POINT FENTRY_release
#include "vtrace_fn.h"
/* The device is let go (vhost_dev_cleanup): after this its queues carry no
 * more events until an owner takes it again (SET_OWNER). vtrace forgets a
 * released device's queues once they have been quiet for the eviction window,
 * and only then (vtrace/aggregate/slots.py): a stopped VM's are kept. */
int release_entry(FN_CTX *ctx)
{
	each_queue(ctx, (const void *)ARG(1), VTRACE_RELEASE, 0);
	return 0;
}
#endif

#ifdef HAVE_vdpa_ioctl
#undef FN_POINT
#define FN_POINT FENTRY_vdpa_ioctl
#include "vtrace_fn.h"
int vdpa_ioctl_entry(FN_CTX *ctx)
{
	u32 cmd = ARG(2);
	if (cmd != VHOST_VDPA_SET_VRING_ENABLE && cmd != VHOST_VDPA_SUSPEND && cmd != VHOST_VDPA_RESUME)
		return 0;
	struct call c = {};
	c.a0 = rd_u64((const void *)ARG(1) + OFF_FILE_PRIVATE) + OFF_VDPA_VDEV;	/* &v->vdev */
	c.a1 = cmd;
	c.a2 = ARG(3);
	put_call(5, &c);
	return 0;
}

int vdpa_ioctl_return(FN_CTX *ctx)
{
	struct call a;
	if (take_call(5, &a))
		return 0;
	if (RETVAL != 0)
		return 0;	/* refused (a kernel or parent without suspend: -EOPNOTSUPP) */
	const void *dev = (const void *)a.a0;
	if (a.a1 == VHOST_VDPA_SUSPEND || a.a1 == VHOST_VDPA_RESUME) {
		each_queue(ctx, dev, a.a1 == VHOST_VDPA_SUSPEND ? VTRACE_SUSPEND : VTRACE_RESUME, 0);
		return 0;
	}
	u32 num = 0;
	const void *vq = vring_state(dev, (const void *)a.a2, &num);
	if (!vq)
		return 0;
	struct vtrace_event e = {};
	head(&e, VTRACE_VRING_ENABLE, vq, vq_seen(vq));
	e.id = num != 0;	/* set_vq_ready(vdpa, idx, s.num): a bool */
	emit(&e);
	return 0;
}
#endif

#ifdef HAVE_net_ioctl
#undef FN_POINT
#define FN_POINT FENTRY_net_ioctl
#include "vtrace_fn.h"
int net_ioctl_entry(FN_CTX *ctx)
{
	if ((u32)ARG(2) != VHOST_NET_SET_BACKEND)
		return 0;
	s32 f[2] = {};	/* struct vhost_vring_file {index, fd} in the VMM's memory */
	if (bpf_probe_read_user(f, sizeof(f), (const void *)ARG(3)))
		return 0;
	struct call c = {};
	c.a0 = rd_u64((const void *)ARG(1) + OFF_FILE_PRIVATE) + OFF_NET_DEV;	/* &n->dev */
	c.a1 = (u64)(s64)f[1];
	put_call(6, &c);
	return 0;
}

int net_ioctl_return(FN_CTX *ctx)
{
	struct call a;
	if (take_call(6, &a))
		return 0;
	if (RETVAL != 0 || (s64)a.a1 < 0)
		return 0;	/* refused, or the backend removed (fd -1): the last one set names it */
	struct dev_info *d = dev_seen(a.a0);
	if (!d)
		return 0;
	d->backend_fd = (s32)a.a1;
	d->fd_tgid = bpf_get_current_pid_tgid() >> 32;
	dev_changed();
	return 0;
}
#endif

#ifdef HAVE_vsock_ioctl
#undef FN_POINT
#define FN_POINT FENTRY_vsock_ioctl
#include "vtrace_fn.h"
int vsock_ioctl_entry(FN_CTX *ctx)
{
	if ((u32)ARG(2) != VHOST_VSOCK_SET_GUEST_CID)
		return 0;
	struct call c = {};
	c.a0 = rd_u64((const void *)ARG(1) + OFF_FILE_PRIVATE);	/* the struct vhost_vsock */
	put_call(7, &c);
	return 0;
}

int vsock_ioctl_return(FN_CTX *ctx)
{
	struct call a;
	if (take_call(7, &a))
		return 0;
	if (RETVAL != 0)
		return 0;	/* refused: a CID out of range or in use, nothing changed */
	const void *vsock = (const void *)a.a0;
	struct dev_info *d = dev_seen((u64)vsock + OFF_VSOCK_DEV);
	if (!d)
		return 0;
	d->guest_cid = rd_u32(vsock + OFF_VSOCK_GUEST_CID);	/* as the kernel keeps it */
	dev_changed();
	return 0;
}
#endif
