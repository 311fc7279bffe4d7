// What axrisi-client.js probes for outside the DOM lib, for `tsc -p tsconfig.checkjs.json`: the
// service worker global scope (in the WebWorker lib, which cannot be combined with DOM) and the
// extension APIs it calls: one to keep an MV3 service worker alive, and `chrome.storage.session`
// where it keeps running streams.
declare var ServiceWorkerGlobalScope: { new (): unknown; prototype: unknown } | undefined;
declare var chrome: {
  runtime?: { getPlatformInfo?: () => Promise<unknown> | void };
  storage?: {
    session?: {
      get: (keys: null) => Promise<Record<string, unknown>>;
      set: (items: Record<string, unknown>) => Promise<void>;
      remove: (keys: string) => Promise<void>;
    };
  };
} | undefined;
