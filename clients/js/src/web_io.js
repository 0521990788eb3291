// The browser's side of the client's I/O: sources over URLs or picked `File`s, the Skip-Cache and adapters kept
// in IndexedDB, and adapter files handed back as downloads. Works in a page and in a Web Worker.
import { UserError } from './npy.js';

/** Files under a base URL (a folder on the page's own server) as a source for bundle.js. */
export function urlSource(base) {
  const root = new URL(base.endsWith('/') ? base : base + '/', globalThis.location.href);
  return {
    where: root.href.replace(/\/$/, ''),
    async read(name, what) {
      let r;
      try {
        r = await fetch(new URL(name, root));
      } catch (e) {
        throw new UserError(`${what}: cannot fetch ${new URL(name, root)} (${e.message})`);
      }
      if (!r.ok) throw new UserError(`${what} not found: expected a file at ${new URL(name, root)} (HTTP ${r.status})`);
      return new Uint8Array(await r.arrayBuffer());
    },
  };
}

/** Picked files (an <input type=file multiple> selection, `File`s by base name) as a source. */
export function fileSource(files, where = 'picked files') {
  const byName = new Map(Array.from(files, (f) => [f.name, f]));
  return {
    where,
    async read(name, what) {
      const f = byName.get(name);
      if (!f) throw new UserError(`${what} not found: expected a file named ${name} among ${where} (found ${[...byName.keys()].join(', ') || 'none'})`);
      return new Uint8Array(await f.arrayBuffer());
    },
  };
}

/** Bytes of a URL or a `File`. */
export async function bytesOf(item, what) {
  if (typeof item !== 'string') return new Uint8Array(await item.arrayBuffer());
  const r = await fetch(item);
  if (!r.ok) throw new UserError(`${what} not found: expected a file at ${item} (HTTP ${r.status})`);
  return new Uint8Array(await r.arrayBuffer());
}

const DB = 'edgelora';
const STORES = ['cache', 'adapters'];

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => STORES.forEach((s) => req.result.objectStoreNames.contains(s) || req.result.createObjectStore(s));
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function tx(store, mode, fn) {
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const t = db.transaction(store, mode);
      const req = fn(t.objectStore(store));
      t.oncomplete = () => resolve(req && req.result);
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error || new Error('IndexedDB transaction aborted'));
    });
  } finally {
    db.close();
  }
}

/**
 * The Skip-Cache in IndexedDB: rows per (backbone identity, data hash), for finetune.cacheRows. Without
 * IndexedDB (a private window, a full quota) it is a cache that always misses: the backbone recomputes. `put`
 * returns at once and the rows are written in the background (a transaction: all or nothing), so training does not
 * wait for the disk (fan's 3.7 MB of rows took 20-60 ms in Chromium); a later `get` is ordered after it.
 */
export const idbCache = {
  get: async (key) => { try { return (await tx('cache', 'readonly', (s) => s.get(key))) || null; } catch (e) { return null; } },
  put: async (key, rows) => { tx('cache', 'readwrite', (s) => s.put(rows, key)).catch(() => { /* not kept */ }); },
};

/** Adapters kept in IndexedDB by name: { files: {name: bytes}, saved (ISO time), summary }. */
export const idbAdapters = {
  save: (name, record) => tx('adapters', 'readwrite', (s) => s.put({ ...record, saved: new Date().toISOString() }, name)),
  load: (name) => tx('adapters', 'readonly', (s) => s.get(name)),
  names: () => tx('adapters', 'readonly', (s) => s.getAllKeys()),
};

/** An object URL per file, for <a download> links (the page revokes them when it replaces them). */
export function downloadLinks(files) {
  return Object.entries(files).map(([name, bytes]) => ({
    name, url: URL.createObjectURL(new Blob([bytes], { type: name.endsWith('.json') ? 'application/json' : 'application/octet-stream' })),
  }));
}
