// SHA-256 hex digests through Web Crypto (globalThis.crypto.subtle: browsers, Node 18+).

/** Lower-case hex SHA-256 of bytes (Uint8Array) or a string (UTF-8). */
export async function sha256(data) {
  const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
  const digest = new Uint8Array(await globalThis.crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}
