'use strict';
// SplitMix64 + Fisher-Yates, exactly as specified in edgelora/shuffle.py (the Python reference).
const MASK = (1n << 64n) - 1n;
const GAMMA = 0x9E3779B97F4A7C15n;
const MIX1 = 0xBF58476D1CE4E5B9n;
const MIX2 = 0x94D049BB133111EBn;
const INIT_STREAM = 0;
const SHUFFLE_STREAM = 1;

class SplitMix64 {
  /** stream 0 initialises the adapters, stream 1 shuffles; state = (seed mod 2^64) XOR (stream << 63). */
  constructor(seed, stream = SHUFFLE_STREAM) {
    if (!Number.isSafeInteger(seed) && typeof seed !== 'bigint') {
      throw new TypeError(`seed should be an integer, found ${seed}`);
    }
    this.state = BigInt.asUintN(64, BigInt(seed)) ^ (BigInt(stream) << 63n);
  }

  next() {
    this.state = (this.state + GAMMA) & MASK;
    let z = this.state;
    z = ((z ^ (z >> 30n)) * MIX1) & MASK;
    z = ((z ^ (z >> 27n)) * MIX2) & MASK;
    return z ^ (z >> 31n);
  }

  /** A double in [0, 1): the top 53 bits. */
  uniform() {
    return Number(this.next() >> 11n) * 2 ** -53;
  }

  /** Fisher-Yates permutation of 0..n-1 as a BigInt64Array (the kit's `perm` input). */
  permutation(n) {
    const a = new BigInt64Array(n);
    for (let i = 0; i < n; i++) a[i] = BigInt(i);
    for (let i = n - 1; i >= 1; i--) {
      const j = Number(((this.next() >> 32n) * BigInt(i + 1)) >> 32n);
      const t = a[i]; a[i] = a[j]; a[j] = t;
    }
    return a;
  }
}

/** Initial A_k (d_k x r, row-major) of every tap, concatenated: (2u - 1) / sqrt(d_k) rounded to float32. */
function initValues(widths, rank, seed) {
  const rng = new SplitMix64(seed, INIT_STREAM);
  const out = new Float32Array(widths.reduce((s, d) => s + d * rank, 0));
  let i = 0;
  for (const d of widths) {
    const root = Math.sqrt(d);
    for (let k = 0; k < d * rank; k++) out[i++] = (2 * rng.uniform() - 1) / root;
  }
  return out;
}

module.exports = { SplitMix64, initValues, INIT_STREAM, SHUFFLE_STREAM };
