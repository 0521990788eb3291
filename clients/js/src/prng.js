// SplitMix64 + Fisher-Yates, exactly as specified in edgelora/core/shuffle.py (the Python reference).
// 64-bit arithmetic on pairs of uint32 (hi, lo) held in doubles: exact, and ~20x faster than BigInt.
const TWO32 = 4294967296;
const INIT_STREAM = 0;
const SHUFFLE_STREAM = 1;
const GAMMA = [0x9E3779B9, 0x7F4A7C15];
const MIX1 = [0xBF58476D, 0x1CE4E5B9];
const MIX2 = [0x94D049BB, 0x133111EB];

let H = 0;  // high word of the last mul64 / xorShift result (the low word is returned): no allocations
/** (ah, al) * (bh, bl) mod 2^64: returns the low word, leaves the high word in H. */
function mul64(ah, al, bh, bl) {
  const a0 = al & 0xffff; const a1 = al >>> 16; const b0 = bl & 0xffff; const b1 = bl >>> 16;
  const mid = a1 * b0 + a0 * b1;                           // < 2^33: exact
  const low = a0 * b0 + (mid % 65536) * 65536;             // < 2^33
  const hi = a1 * b1 + Math.floor(mid / 65536) + Math.floor(low / TWO32);  // high word of al * bl
  H = (hi + Math.imul(al, bh) + Math.imul(ah, bl)) >>> 0;
  return low >>> 0;
}

/** z ^ (z >> s) for 0 < s < 32: returns the low word, leaves the high word in H. */
function xorShift(h, l, s) {
  H = (h ^ (h >>> s)) >>> 0;
  return (l ^ ((l >>> s) | (h << (32 - s)))) >>> 0;
}

class SplitMix64 {
  /** stream 0 initialises the adapters, stream 1 shuffles; state = (seed mod 2^64) XOR (stream << 63). */
  constructor(seed, stream = SHUFFLE_STREAM) {
    if (!Number.isSafeInteger(seed)) throw new TypeError(`seed should be an integer, found ${seed}`);
    const s = BigInt.asUintN(64, BigInt(seed));               // once per stream: BigInt is fine here
    this.hi = (Number(s >> 32n) ^ (stream ? 0x80000000 : 0)) >>> 0;
    this.lo = Number(s & 0xffffffffn);
  }

  /** Advance; returns the output's low word, its high word is left in `this.out`. */
  step() {
    const sum = this.lo + GAMMA[1];
    this.lo = sum >>> 0;
    this.hi = (this.hi + GAMMA[0] + (sum >= TWO32 ? 1 : 0)) >>> 0;
    let l = xorShift(this.hi, this.lo, 30);
    l = mul64(H, l, MIX1[0], MIX1[1]);
    l = xorShift(H, l, 27);
    l = mul64(H, l, MIX2[0], MIX2[1]);
    l = xorShift(H, l, 31);
    this.out = H;
    return l;
  }

  /** The next output as a BigInt (for checks against the specification). */
  next() {
    const l = this.step();
    return (BigInt(this.out) << 32n) | BigInt(l);
  }

  /** A double in [0, 1): the top 53 bits. */
  uniform() {
    const l = this.step();
    return (this.out * 2097152 + (l >>> 11)) * 2 ** -53;
  }

  /** Fisher-Yates permutation of 0..n-1 as a BigInt64Array (the kit's `perm` input). */
  permutation(n) {
    const a = new Int32Array(n);
    for (let i = 0; i < n; i++) a[i] = i;
    for (let i = n - 1; i >= 1; i--) {
      this.step();
      const x = this.out;                                      // (next() >> 32) * (i + 1) >> 32, exactly:
      const t = (x >>> 16) * (i + 1) + Math.floor((x & 0xffff) * (i + 1) / 65536);
      const j = Math.floor(t / 65536);
      const tmp = a[i]; a[i] = a[j]; a[j] = tmp;
    }
    const out = new BigInt64Array(n);                          // little-endian int64: low word, high word 0
    const words = new Int32Array(out.buffer);
    for (let i = 0; i < n; i++) words[2 * i] = a[i];
    return out;
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

export { SplitMix64, initValues, INIT_STREAM, SHUFFLE_STREAM };
