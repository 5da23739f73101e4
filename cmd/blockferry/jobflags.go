package main

import (
	"github.com/spf13/pflag"

	"github.com/blockferry/blockferry/jobs"
)

// jobFlags are the flags that describe a backup job, shared by `backup`, which
// runs it here, and `submit`, which hands it (or a restore or verify job, which
// take some of them) to the workers. Like every flag that describes one job, they
// take no values from the environment or the config file.
type jobFlags struct {
	spec      jobs.Spec // disk, parent and options
	source    jobs.Endpoint
	labels    []string
	rateLimit jobs.ByteSize
}

func (j *jobFlags) register(f *pflag.FlagSet) {
	f.StringVar(&j.spec.Disk, "disk", "", "name of the disk, e.g. vm1/vda")
	f.StringVar(&j.source.URI, "source", "", "NBD URI of the disk (nbd://, nbd+unix://, nbds://) or a raw file")
	f.StringVar(&j.source.Bitmap, "bitmap", "", "dirty bitmap of an incremental backup")
	f.StringVar(&j.spec.Parent, "parent", "", "backup id the incremental is taken against")
	f.Var(&j.spec.Options.ChunkSize, "chunk-size", "chunk size, e.g. 4MiB (default: the repository's)")
	f.StringVar(&j.spec.Options.Compression, "compression", "", "zstd or none (default: the repository's)")
	concurrencyFlag(f, &j.spec.Options.Concurrency)
	f.Var(&j.rateLimit, "rate-limit", "cap on source reads, e.g. 200MiB (per second)")
	f.StringSliceVar(&j.labels, "label", nil, "key=value label recorded with the backup (repeatable)")
}

// job is the job of kind and id the flags describe; it has a source when
// --source was given.
func (j *jobFlags) job(kind, id string) (jobs.Spec, error) {
	s := j.spec
	s.SpecVersion, s.ID, s.Kind = jobs.SpecVersion, id, kind
	if j.rateLimit != 0 {
		s.Options.RateLimit = j.rateLimit.String() // a string in the job, as workers of every version read it
	}
	if j.source.URI != "" {
		src := j.source
		s.Source = &src
	}
	var err error
	s.Labels, err = parseLabels(j.labels)
	return s, err
}
