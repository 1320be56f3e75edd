/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vtrace_tp.h - a raw tracepoint's context: BTF-typed (tp_btf) or raw.
 *
 * One source serves both strategies (vtrace/kernel/attach.py picks per point
 * and per kernel). Each point's block starts with
 *     #undef TP_POINT
 *     #define TP_POINT TP_BTF_<tracepoint>
 *     #include "vtrace_tp.h"
 * The loader defines TP_BTF_<tracepoint>=1 when that point loads as tp_btf
 * (vtrace loads it, vtrace/kernel/fentry.py) and leaves it undefined (0 in
 * #if) for a raw tracepoint (bcc loads and attaches it). Then:
 *     TP_PROBE(name)            the program's signature
 *     TP_ARG(n)                 argument n, from 0
 *     TP_TYPED                  1 under tp_btf, else 0 (for C code)
 *     TP_LD(type, p, off)       a field of a struct argument p: a plain load
 *                               under tp_btf, where p is a typed pointer and the
 *                               verifier checks the access against BTF (a fault
 *                               reads 0, as a failed probe read does); a probe
 *                               read otherwise
 * A pointer read with TP_LD from a typed pointer is typed again where BTF says
 * the field points to a struct, so chains (rq->q->disk) stay plain loads.
 *
 * btf_typed(p, id): p as a read-only typed pointer to vmlinux BTF type id
 * (bpf_rdonly_cast, 6.2+), for a pointer the tracepoint hands over untyped
 * (an irqaction's void *dev_id). Compiled as a call of helper
 * RDONLY_CAST_MARK, which the loader turns into the kfunc call
 * (fentry.patch_kfuncs); the verifier inlines it to a register move.
 */
#undef TP_PROBE
#undef TP_ARG
#undef TP_LD
#undef TP_TYPED
#if TP_POINT
#define TP_TYPED 1
#define TP_PROBE(name) int tp_btf__##name(u64 *ctx)
#define TP_ARG(n) (ctx[n])
#define TP_LD(type, p, off) (*(type *)((const u8 *)(p) + (off)))
#else
#define TP_TYPED 0
#define TP_PROBE(name) RAW_TRACEPOINT_PROBE(name)
#define TP_ARG(n) (ctx->args[n])
#define TP_LD(type, p, off) tp_rd_##type((const u8 *)(p) + (off))
#endif

#ifndef __VTRACE_TP_H
#define __VTRACE_TP_H
static __always_inline u64 tp_rd_u64(const void *p) { return rd_u64(p); }
static __always_inline u32 tp_rd_u32(const void *p) { return rd_u32(p); }
#ifdef RDONLY_CAST_MARK
static void *(*btf_typed)(const void *p, u32 btf_id) = (void *)RDONLY_CAST_MARK;
#endif
#endif
