// What axrisi-client.js probes for outside the DOM lib, for `tsc -p tsconfig.checkjs.json`: the
// service worker global scope (in the WebWorker lib, which cannot be combined with DOM) and the
// extension API it calls to keep an MV3 service worker alive.
declare var ServiceWorkerGlobalScope: { new (): unknown; prototype: unknown } | undefined;
declare var chrome: { runtime?: { getPlatformInfo?: () => Promise<unknown> | void } } | undefined;
