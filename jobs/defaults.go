package jobs

// Defaults of what a job, a runner or a worker leaves unset. They are resolved
// here and nowhere else: the Runner applies them when it opens what a job names,
// and the command line's flags take their default values and help texts from
// them. The repository format and the device implementations have no defaults of
// their own.
const (
	// DefaultConcurrency is the number of chunks a job has in flight when neither
	// the job (options.concurrency) nor its runner (WithConcurrency) says.
	DefaultConcurrency = 8

	// DefaultChunkSize is the chunk size of a repository created without one (by
	// `init` or by the first backup into it). A backup that names no chunk size
	// takes its repository's, an incremental its parent's.
	DefaultChunkSize = 4 << 20

	// DefaultCompression is the compression of a repository created without one.
	// A backup that names none takes its repository's.
	DefaultCompression = "zstd"

	// DefaultConnections is the most connections a job opens to one NBD export,
	// when the server allows several (multi-conn).
	DefaultConnections = 4

	// DefaultMaxInFlight bounds the bytes of the read requests a job has
	// outstanding on one source connection: four 256 KiB commands. QEMU's NBD
	// server allocates a buffer per command; with more bytes outstanding (8 MiB
	// or more over the DefaultConnections) qemu-nbd took 10-16k page faults per
	// GiB a backup read, with 4 MiB almost none, and reading was not slower (1 GiB
	// from qemu-nbd on a unix socket: 1.20 s, against 1.37 s with 64 MiB).
	DefaultMaxInFlight = 1 << 20

	// DefaultMemoryPerJob is a worker's chunk buffer budget per job it runs at
	// once, when no memory limit is set: a job with the default concurrency and
	// chunk size needs about half of it for a backup, three quarters for a restore
	// (see backupChunkMemory, restoreChunkMemory).
	DefaultMemoryPerJob = 128 << 20
)
