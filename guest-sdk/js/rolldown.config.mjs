// The contract's imports are resolved by componentize-js, not bundled.
export default { external: [/^reconcile:/, /^wasi:/] };
