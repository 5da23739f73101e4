// Package repository is blockferry's repository format on any sinks.Store: the
// config object and its keys, content-addressed chunks (BLAKE3 ids, zstd,
// AES-256-GCM when encrypted), manifests that index every chunk position of a
// backup, the patches of incrementals, and the checkpoints of running jobs.
// docs/FORMAT.md describes what this package writes and reads; an independent
// reader of the format mirrors this package and nothing else.
//
// Nothing read from a store is trusted: every object is checked against its
// name, every chunk against its id, every manifest against the limits in
// FORMAT.md before it is used.
package repository
