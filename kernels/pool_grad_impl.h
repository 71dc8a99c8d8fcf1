/* pool_grad_impl.h — the C core of kernels/pool_grad.pyx's max pool backward that recomputes the
 * argmax (pool_grad_body.h, included once per dtype with T and SFX defined).
 *
 * The argmax is torch's: over the window's real pixels in row-major order, a pixel replaces the
 * best if it is larger or NaN — the first maximum, the last NaN, the first pixel of an all -inf
 * window. Given the window's maximum m (the forward's output, which is NaN when the window holds
 * one), that is the first tap equal to m, or the last NaN tap when m is NaN (a tie of -0 and +0 is
 * equal under ==, and torch keeps the first of them too). Each tap's test is independent of the
 * others and the running index is a select: no branch mispredicts on random data and no chain of
 * dependent compares (a running-maximum scan ran ~30x slower than the forward's values-only
 * kernel on ResNet-18's 3x3/2 pool).
 */
#ifndef FASTCONV_POOL_GRAD_IMPL_H
#define FASTCONV_POOL_GRAD_IMPL_H

#include <stddef.h>
#include <string.h>

#define FC_COMMON_NAMES_ONLY /* FC_NAME / FC_JOIN: the bodies' per-dtype names */
#include "_common.h"
#undef FC_COMMON_NAMES_ONLY

#define T float
#define SFX f
#include "pool_grad_body.h"
#undef T
#undef SFX

#define T double
#define SFX d
#include "pool_grad_body.h"
#undef T
#undef SFX


#endif
