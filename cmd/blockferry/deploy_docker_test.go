package main

// Images: what deploy/ runs, and that third-party images are pinned.

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

// deployAllowedImages are the image repositories deploy/ may use besides blockferry's.
var deployAllowedImages = map[string]bool{
	"blockferry":        true, // built from the repository's Dockerfile
	"nats":              true,
	"versity/versitygw": true,
	"natsio/nats-box":   true,
	"amazon/aws-cli":    true,
}

// deployImageRepo splits an image reference into repository (without docker.io/ and
// library/) and tag.
func deployImageRepo(ref string) (repo, tag string) {
	ref, _, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref, tag = ref[:i], ref[i+1:]
	}
	ref = strings.TrimPrefix(ref, "docker.io/")
	ref = strings.TrimPrefix(ref, "library/")
	return ref, tag
}

// collectImages records every image: field, wherever it is.
func (d *deployTree) collectImages(where string, v any) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if s, ok := dStr(e); ok && k == "image" {
				d.images[s] = append(d.images[s], where)
			} else {
				d.collectImages(where, e)
			}
		}
	case []any:
		for _, e := range v {
			d.collectImages(where, e)
		}
	}
}

// TestDeployImages: every image is blockferry's or one of the expected third-party
// images, and those are pinned to a version.
func TestDeployImages(t *testing.T) {
	d := loadDeployTree(t)
	if len(d.images) == 0 {
		t.Fatal("no image: found under deploy/")
	}
	for ref, where := range d.images {
		repo, tag := deployImageRepo(ref)
		switch {
		case !deployAllowedImages[repo]:
			t.Errorf("%s: image %q is not blockferry:* nor one of %v", where[0], ref, slices.Sorted(maps.Keys(deployAllowedImages)))
		case repo != "blockferry" && (tag == "" || tag == "latest"):
			t.Errorf("%s: image %q is not pinned to a version", where[0], ref)
		}
	}
}
