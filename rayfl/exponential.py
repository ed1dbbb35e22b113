"""Many seeded Exp(1) draws at once, bit-identical to ``seeding.rng(seed, stream, a, b).exponential()``.

The speed model draws each job's duration noise from its own generator
``np.random.default_rng([seed, stream, client, version])``: a pure function of the job, so any
worker, any order and a resumed run see the same number. Building one generator costs ~25 us in
Python, so dispatching 10,000,000 clients took minutes. This module computes the same first draw
for a whole array of (a, b) pairs with numpy, following numpy's own algorithms step by step:

1. ``SeedSequence`` (entropy [seed, stream, a, b], each < 2**32, so one uint32 word each; pool of
   4): ``mix_entropy``, then ``generate_state(4, uint64)``;
2. ``PCG64``'s seeding (``pcg_setseq_128_srandom_r``) and one step of its XSL-RR output, in
   128-bit arithmetic on (hi, lo) uint64 pairs;
3. the ziggurat of ``random_standard_exponential``: ``x = (u >> 11) * we[idx]`` when
   ``(u >> 11) < ke[idx]`` (98.9 % of draws).

The ziggurat tables are not exposed by numpy, so they are read from numpy itself once per process
(:func:`_tables`: a PCG64 state is set so that its next output is a chosen number). The rare draws
that leave the ziggurat's fast path, and any (a, b) too large for one word, are drawn the scalar
way. :func:`exponentials` checks itself against the scalar draws of a few jobs on first use, and
falls back to them entirely if a future numpy computes differently.
"""

from __future__ import annotations

import functools

import numpy as np

_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
# numpy/random/bit_generator.pyx (SeedSequence)
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
# numpy/random/src/pcg64 (PCG_DEFAULT_MULTIPLIER_128)
_PCG_MULT = (2549297995355413924 << 64) + 4865540595714422341
_CHUNK = 1 << 20  # jobs per numpy pass: bounds the temporaries (~100 bytes per job)


def exponentials(seed: int, stream: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(n,)`` float64: ``np.random.default_rng([seed, stream, a[j], b[j]]).exponential()``.

    ``a`` and ``b`` are ``(n,)`` non-negative integers (client ids and versions). Bit-identical
    to the scalar draws; about 1 us per draw instead of 25.

    Example:
        >>> x = exponentials(7, 3, np.array([0, 5]), np.array([2, 2]))
        >>> x[1] == np.random.default_rng([7, 3, 5, 2]).exponential()
        True
    """
    a = np.asarray(a, dtype=np.int64).reshape(-1)
    b = np.asarray(b, dtype=np.int64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"a{a.shape} and b{b.shape} must have the same shape")
    out = np.full(a.size, np.nan)
    if _fast_ok(seed, stream) and _self_check():
        for lo in range(0, a.size, _CHUNK):
            sl = slice(lo, lo + _CHUNK)
            out[sl] = _draw(seed, stream, a[sl], b[sl])
    for j in np.flatnonzero(np.isnan(out)):  # the slow path, or all of them without the fast one
        out[j] = _scalar(seed, stream, int(a[j]), int(b[j]))
    return out


def _scalar(seed: int, stream: int, a: int, b: int) -> float:
    return float(np.random.default_rng([int(seed), int(stream), a, b]).exponential())


def _fast_ok(seed: int, stream: int) -> bool:
    return 0 <= int(seed) <= _M32 and 0 <= int(stream) <= _M32


def _draw(seed: int, stream: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One chunk; NaN where the ids need more than one entropy word (the scalar way)."""
    one_word = (a >= 0) & (a <= _M32) & (b >= 0) & (b <= _M32)
    words = [np.full(a.size, int(seed), np.uint32), np.full(a.size, int(stream), np.uint32)]
    words += [a.astype(np.uint32), b.astype(np.uint32)]
    hi, lo, inc_hi, inc_lo = _pcg64_seeded(_generate_state(_mix_entropy(words)))
    u = _pcg64_output(*_step(hi, lo, inc_hi, inc_lo))
    ke, we = _tables()
    ri = u >> np.uint64(11)
    idx = ((u >> np.uint64(3)) & np.uint64(0xFF)).astype(np.intp)
    x = ri.astype(np.float64) * we[idx]  # ri < 2**53: exact in a double, as in numpy's C
    slow = np.flatnonzero((ri >= ke[idx]) & one_word)  # ~1.1 %: numpy draws them itself
    x[slow] = [_from_state(hi[j], lo[j], inc_hi[j], inc_lo[j]) for j in slow]
    x[~one_word] = np.nan
    return x


# --- SeedSequence ------------------------------------------------------------------------------


def _hash_consts(init: int, mult: int, count: int) -> list[tuple[np.uint32, np.uint32]]:
    """The constants of ``count`` successive hashmix calls: (xor with, multiply by). They do
    not depend on the data, so they are the same for every job."""
    out, h = [], init
    for _ in range(count):
        h_next = (h * mult) & _M32
        out.append((np.uint32(h), np.uint32(h_next)))
        h = h_next
    return out


def _hashmix(value: np.ndarray, consts: tuple[np.uint32, np.uint32]) -> np.ndarray:
    """``hashmix`` of numpy's SeedSequence (uint32 arithmetic, wrapping)."""
    xor_with, mult_by = consts
    value = (value ^ xor_with) * mult_by
    return value ^ (value >> np.uint32(16))


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
    return r ^ (r >> np.uint32(16))


def _mix_entropy(entropy: list[np.ndarray]) -> list[np.ndarray]:
    """``SeedSequence.mix_entropy`` for 4 words of entropy and a pool of 4 (uint32 arrays)."""
    consts = iter(_hash_consts(_INIT_A, _MULT_A, 4 + 12))
    mixer = [_hashmix(e, next(consts)) for e in entropy]
    for src in range(4):
        for dst in range(4):
            if src != dst:
                mixer[dst] = _mix(mixer[dst], _hashmix(mixer[src], next(consts)))
    return mixer


def _generate_state(pool: list[np.ndarray]) -> list[np.ndarray]:
    """``SeedSequence.generate_state(4, np.uint64)``: four uint64 arrays."""
    consts = _hash_consts(_INIT_B, _MULT_B, 8)
    words = [_hashmix(pool[i % 4], consts[i]) for i in range(8)]
    # little-endian view of 8 uint32 as 4 uint64: word 2k is the low half
    return [
        words[2 * k].astype(np.uint64) | (words[2 * k + 1].astype(np.uint64) << np.uint64(32))
        for k in range(4)
    ]


# --- PCG64 -------------------------------------------------------------------------------------


def _mulhi64(x: np.ndarray, c: int) -> np.ndarray:
    """The high 64 bits of the 128-bit product x * c (x uint64 array, c a 64-bit constant)."""
    m = np.uint64(_M32)
    x0, x1 = x & m, x >> np.uint64(32)
    c0, c1 = np.uint64(c & _M32), np.uint64(c >> 32)
    p00, p01, p10, p11 = x0 * c0, x0 * c1, x1 * c0, x1 * c1
    mid = (p00 >> np.uint64(32)) + (p01 & m) + (p10 & m)
    return p11 + (p01 >> np.uint64(32)) + (p10 >> np.uint64(32)) + (mid >> np.uint64(32))


def _step(
    hi: np.ndarray, lo: np.ndarray, inc_hi: np.ndarray, inc_lo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One PCG step: state * MULT + inc (mod 2**128) on (hi, lo) pairs (array arithmetic
    wraps silently)."""
    m_hi, m_lo = _PCG_MULT >> 64, _PCG_MULT & _M64
    new_hi = _mulhi64(lo, m_lo) + lo * np.uint64(m_hi) + hi * np.uint64(m_lo)
    new_lo = lo * np.uint64(m_lo)
    out_lo = new_lo + inc_lo
    out_hi = new_hi + inc_hi + (out_lo < new_lo).astype(np.uint64)
    return out_hi, out_lo


def _pcg64_seeded(seed_words: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """PCG64's state after seeding with SeedSequence words (``pcg_setseq_128_srandom_r``):
    (state hi, state lo, inc hi, inc lo)."""
    s_hi, s_lo, i_hi, i_lo = seed_words  # PCG_128BIT_CONSTANT(seed[0], seed[1]), same for inc
    one = np.uint64(1)
    inc_hi = (i_hi << one) | (i_lo >> np.uint64(63))
    inc_lo = (i_lo << one) | one
    # state = 0; step -> inc; state += initstate; step
    lo = inc_lo + s_lo
    hi = inc_hi + s_hi + (lo < inc_lo).astype(np.uint64)
    hi, lo = _step(hi, lo, inc_hi, inc_lo)
    return hi, lo, inc_hi, inc_lo


def _pcg64_output(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """PCG's XSL-RR output of a (stepped) state."""
    rot = hi >> np.uint64(58)
    xored = hi ^ lo
    return (xored >> rot) | (xored << ((np.uint64(64) - rot) & np.uint64(63)))


@functools.cache
def _generator() -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(0))


def _from_state(hi: np.uint64, lo: np.uint64, inc_hi: np.uint64, inc_lo: np.uint64) -> float:
    """numpy's own exponential from a PCG64 state: the ziggurat's slow path, without building a
    SeedSequence (~4 us instead of ~25)."""
    g = _generator()
    g.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (int(hi) << 64) | int(lo), "inc": (int(inc_hi) << 64) | int(inc_lo)},
        "has_uint32": 0,
        "uinteger": 0,
    }
    return float(g.exponential())


# --- the ziggurat tables, read from numpy --------------------------------------------------------


def _exponential_of(u: int) -> tuple[float, bool]:
    """numpy's ``standard_exponential`` when the bit generator's next output is ``u``; and
    whether it used that output alone (the ziggurat's fast path)."""
    g = np.random.Generator(np.random.PCG64(0))
    # After one step the state is (hi = 0, lo = u): XSL-RR rotates by 0 and outputs 0 ^ u = u.
    inc = 1
    prev = ((u - inc) * pow(_PCG_MULT, -1, 1 << 128)) % (1 << 128)
    g.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": prev, "inc": inc},
        "has_uint32": 0,
        "uinteger": 0,
    }
    x = float(g.standard_exponential())
    return x, g.bit_generator.state["state"]["state"] == u


@functools.cache
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """``(ke, we)``: numpy's ziggurat tables for the exponential (256 entries each), found by
    feeding chosen outputs: ``we[i]`` is the draw for ri = 1, ``ke[i]`` the least ri that
    leaves the fast path (binary search; ~14,000 draws, ~0.1 s once per process)."""
    ke = np.zeros(256, dtype=np.uint64)
    we = np.zeros(256, dtype=np.float64)
    for i in range(256):
        lo, hi = 0, 1 << 53  # fast(lo) holds; hi is past the largest ri
        if not _exponential_of(i << 3)[1]:
            continue  # ke[i] = 0: every draw of this strip takes the slow path
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if _exponential_of((mid << 11) | (i << 3))[1] else (lo, mid)
        ke[i] = hi
        we[i] = _exponential_of((1 << 11) | (i << 3))[0] if hi > 1 else 0.0
    return ke, we


@functools.cache
def _self_check() -> bool:
    """Whether the fast path reproduces numpy's scalar draws (it would not if numpy changed
    its algorithms); checked once per process on a few hundred jobs."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 1 << 32, size=300)
    b = rng.integers(0, 1 << 32, size=300)
    a[:5], b[:5] = [0, 1, 2, _M32, 7], [0, 0, 1, _M32, 1 << 20]
    got = _draw(12345, 3, a, b)
    ok = ~np.isnan(got)
    want = np.array([_scalar(12345, 3, int(i), int(j)) for i, j in zip(a[ok], b[ok], strict=True)])
    return bool(ok.sum() > 250 and np.array_equal(got[ok], want))
