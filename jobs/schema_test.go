package jobs

import (
	"encoding/json"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// TestSchemaMatchesSpec keeps docs/job.schema.json and the Spec type in step: the
// same field names at the top level, in endpoints and in options.
func TestSchemaMatchesSpec(t *testing.T) {
	data, err := os.ReadFile("../docs/job.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Properties map[string]struct {
			Properties map[string]any `json:"properties"`
		} `json:"properties"`
		Defs map[string]struct {
			Properties map[string]any `json:"properties"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(data, &schema); err != nil {
		t.Fatal(err)
	}
	check := func(what string, props map[string]any, typ reflect.Type) {
		var fromSchema, fromType []string
		for k := range props {
			fromSchema = append(fromSchema, k)
		}
		for f := range typ.Fields() {
			fromType = append(fromType, strings.Split(f.Tag.Get("json"), ",")[0])
		}
		sort.Strings(fromSchema)
		sort.Strings(fromType)
		if !reflect.DeepEqual(fromSchema, fromType) {
			t.Errorf("%s: schema has %v, Go type has %v", what, fromSchema, fromType)
		}
	}
	top := map[string]any{}
	for k := range schema.Properties {
		top[k] = nil
	}
	check("job", top, reflect.TypeFor[Spec]())
	check("options", schema.Properties["options"].Properties, reflect.TypeFor[Options]())
	check("endpoint", schema.Defs["endpoint"].Properties, reflect.TypeFor[Endpoint]())
	check("retention", schema.Properties["retention"].Properties, reflect.TypeFor[Retention]())
}
