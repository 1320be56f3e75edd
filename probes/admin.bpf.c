// SPDX-License-Identifier: GPL-2.0
/*
 * virtio admin commands (drivers/virtio/virtio_pci_modern.c, Linux 6.9+):
 *   int vp_modern_admin_cmd_exec(struct virtio_device *vdev, struct virtio_admin_cmd *cmd)
 * is every admin command the PF driver sends (legacy I/O for VFs, device
 * parts, LIST_QUERY/USE ...). Entry: opcode, group type, member id (struct
 * virtio_admin_cmd, little-endian, offsets from BTF). Return: the function
 * returns -status when the device answered with a status other than OK
 * (VIRTIO_ADMIN_STATUS_* share errno values), 0 for OK; a transport error
 * returns a negative errno too, indistinguishable here. The status qualifier
 * stays inside the function: UNOBSERVED. Latency is entry to return.
 */
#include <uapi/linux/ptrace.h>
#include "vtrace.h"

struct submit {
	u64 ts;
	u64 vdev;
	u64 member;
	u32 opcode;
	u32 group;
};

BPF_HASH(inflight, u32, struct submit, 1024);	/* tid -> the command it waits for */
#include "vtrace_emit.inc"	/* lost, events, emit(): pasted in by the loader */

#ifdef HAVE_admin_cmd
#undef FN_POINT
#define FN_POINT FENTRY_admin_cmd
#include "vtrace_fn.h"
int admin_entry(FN_CTX *ctx)
{
	const void *cmd = (const void *)ARG(2);
	struct submit s = {};
	u16 op = 0, grp = 0;
	bpf_probe_read_kernel(&op, sizeof(op), cmd + OFF_CMD_OPCODE);
	bpf_probe_read_kernel(&grp, sizeof(grp), cmd + OFF_CMD_GROUP_TYPE);
	bpf_probe_read_kernel(&s.member, sizeof(s.member), cmd + OFF_CMD_MEMBER_ID);
	s.ts = bpf_ktime_get_ns();
	s.vdev = ARG(1);
	s.opcode = op;
	s.group = grp;
	u32 tid = bpf_get_current_pid_tgid();
	inflight.update(&tid, &s);
	struct vtrace_event e = {};
	e.ts = s.ts;
	e.obj = s.vdev;
	e.pid = bpf_get_current_pid_tgid() >> 32;
	e.kind = VTRACE_ADMIN_SUBMIT;
	e.layer = VTRACE_LAYER_VFIO;
	e.queue = VTRACE_NO_QUEUE;
	e.id = op;
	e.aux = grp;
	e.aux2 = s.member;
	e.len = UNOBSERVED;	/* command data (DEV_MODE_SET flags) is in data_sg */
	emit(&e);
	return 0;
}

int admin_return(FN_CTX *ctx)
{
	u32 tid = bpf_get_current_pid_tgid();
	struct submit *s = inflight.lookup(&tid);
	if (!s)
		return 0;
	struct vtrace_event e = {};
	event_head(&e, VTRACE_ADMIN_COMPLETE, VTRACE_LAYER_VFIO, s->vdev, VTRACE_NO_QUEUE);
	e.id = s->opcode;
	e.aux = s->group;
	int ret = RETVAL;
	e.len = ret <= 0 ? -ret : UNOBSERVED;
	e.aux2 = UNOBSERVED;	/* status qualifier */
	e.arg = e.ts - s->ts;
	inflight.delete(&tid);
	emit(&e);
	return 0;
}
#endif
