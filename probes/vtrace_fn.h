/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vtrace_fn.h - a function probe's context: kprobe/kretprobe or fentry/fexit.
 *
 * One source serves both strategies (vtrace/kernel/attach.py picks per point
 * and per kernel). Each point's block starts with
 *     #undef FN_POINT
 *     #define FN_POINT FENTRY_<point>
 *     #include "vtrace_fn.h"
 * The loader defines FENTRY_<point>=<the function's argument count, from
 * BTF> when that point loads as fentry/fexit, and leaves it undefined (0 in
 * #if) for a kprobe. Then:
 *     int fn(FN_CTX *ctx)   the program's signature
 *     ARG(n)                argument n, from 1 (a literal)
 *     RETVAL                the return value (kretprobe/fexit only)
 * fentry/fexit see u64 args[] with the return value after the last argument
 * (kernel/bpf/trampoline.c); a kprobe sees registers (PT_REGS_PARMn). A
 * point attached to several functions (Point.extra in vtrace/live/programs.py)
 * gets the first one's count, so its code reads RETVAL only if they agree.
 */
#undef FN_CTX
#undef ARG
#undef RETVAL
#if FN_POINT
#define FN_CTX u64
#define ARG(n) (ctx[(n) - 1])
#define RETVAL (ctx[FN_POINT])
#else
#define FN_CTX struct pt_regs
#define ARG(n) PT_REGS_PARM##n(ctx)
#define RETVAL PT_REGS_RC(ctx)
#endif
