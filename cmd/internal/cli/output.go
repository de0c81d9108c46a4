package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Format is an output format: -o table (for people), json or yaml (for
// programs). JSON and YAML carry the same fields, named as the admin API
// names them, with times in RFC 3339, UTC.
type Format string

// Output formats.
const (
	Table Format = "table"
	JSON  Format = "json"
	YAML  Format = "yaml"
)

// Set parses a format (pflag.Value).
func (f *Format) Set(s string) error {
	switch Format(s) {
	case Table, JSON, YAML:
		*f = Format(s)
		return nil
	}
	return fmt.Errorf("want table, json or yaml")
}

func (f *Format) String() string { return string(*f) }

// Type names the flag's value in help.
func (f *Format) Type() string { return "format" }

// AddOutputFlag adds -o/--output (default table) to fs.
func AddOutputFlag(fs *pflag.FlagSet) {
	f := Table
	fs.VarP(&f, "output", "o", "output format: table, json or yaml")
}

// AddOutputFlagAliases is AddOutputFlag where -o also takes each alias
// for the format it names: tether-agent's "text", its word for table
// before its commands took the shared formats.
func AddOutputFlagAliases(fs *pflag.FlagSet, aliases map[string]Format) {
	names := slices.Sorted(maps.Keys(aliases))
	for i, a := range names {
		names[i] = a + " for " + string(aliases[a])
	}
	fs.VarP(&aliasedFormat{Format: Table, aliases: aliases}, "output", "o", "output format: table, json or yaml (also "+strings.Join(names, ", ")+")")
}

// aliasedFormat is a Format that also takes other words for formats.
type aliasedFormat struct {
	Format
	aliases map[string]Format
}

func (f *aliasedFormat) Set(s string) error {
	if a, ok := f.aliases[s]; ok {
		f.Format = a
		return nil
	}
	return f.Format.Set(s)
}

// OutputOf is the format cmd's -o/--output flag asks for; table when it
// has none.
func OutputOf(cmd *cobra.Command) (Format, error) {
	fl := cmd.Flag("output")
	if fl == nil {
		return Table, nil
	}
	switch f := fl.Value.(type) {
	case *Format:
		return *f, nil
	case *aliasedFormat:
		return f.Format, nil
	}
	return "", errors.New("the output flag is not a format")
}

// Print writes v in format f: with table for Table, else v as JSON (v is
// marshalled with encoding/json; a json.RawMessage is taken as it is) or
// as YAML with the same fields, times made UTC.
func Print(w io.Writer, f Format, v any, table func(io.Writer) error) error {
	if f == Table || f == "" {
		return table(w)
	}
	n, err := toNode(v)
	if err != nil {
		return err
	}
	switch f {
	case JSON:
		var buf bytes.Buffer
		writeJSON(&buf, n)
		var out bytes.Buffer
		if err := json.Indent(&out, buf.Bytes(), "", "  "); err != nil {
			return err
		}
		out.WriteByte('\n')
		_, err := w.Write(out.Bytes())
		return err
	case YAML:
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		if err := enc.Encode(n); err != nil {
			return err
		}
		return enc.Close()
	}
	return fmt.Errorf("output format %q: want table, json or yaml", f)
}

// JSONLine writes v as one line of JSON, times made UTC (for streams of
// records, such as the audit trail).
func JSONLine(w io.Writer, v any) error {
	n, err := toNode(v)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	writeJSON(&buf, n)
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}

// YAMLItem writes v as one item of a YAML list ("- key: value"), times
// made UTC, so that records written one after another read as one list
// (for streams of records, as JSONLine writes them in JSON).
func YAMLItem(w io.Writer, v any) error {
	n, err := toNode(v)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Content: []*yaml.Node{n}}); err != nil {
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	_, err = w.Write(buf.Bytes())
	return err
}

// toNode turns v into an ordered tree (JSON's field order kept).
func toNode(v any) (*yaml.Node, error) {
	raw, ok := v.(json.RawMessage)
	if !ok {
		var err error
		if raw, err = json.Marshal(v); err != nil {
			return nil, err
		}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	n, err := jsonNode(dec, 0)
	if err != nil {
		return nil, fmt.Errorf("decode JSON: %w", err)
	}
	return n, nil
}

// maxDepth bounds the nesting of the JSON turned into a tree.
const maxDepth = 100

func jsonNode(dec *json.Decoder, depth int) (*yaml.Node, error) {
	if depth > maxDepth {
		return nil, errors.New("nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			n := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return nil, err
				}
				key, ok := k.(string)
				if !ok {
					return nil, fmt.Errorf("object key %v is not a string", k)
				}
				v, err := jsonNode(dec, depth+1)
				if err != nil {
					return nil, err
				}
				n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, v)
			}
			_, err := dec.Token() // }
			return n, err
		case '[':
			n := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
			for dec.More() {
				v, err := jsonNode(dec, depth+1)
				if err != nil {
					return nil, err
				}
				n.Content = append(n.Content, v)
			}
			_, err := dec.Token() // ]
			return n, err
		}
		return nil, fmt.Errorf("unexpected %v", t)
	case string:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: utcTime(t)}, nil
	case json.Number:
		tag := "!!int"
		if strings.ContainsAny(t.String(), ".eE") {
			tag = "!!float"
		}
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: t.String()}, nil
	case bool:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: fmt.Sprint(t)}, nil
	case nil:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}, nil
	}
	return nil, fmt.Errorf("unexpected token %v", tok)
}

// utcTime returns s in UTC if it is an RFC 3339 time, else s.
func utcTime(s string) string {
	if len(s) < len("2006-01-02T15:04:05Z") || s[4] != '-' || s[10] != 'T' {
		return s
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return s
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// writeJSON writes the tree n as compact JSON.
func writeJSON(buf *bytes.Buffer, n *yaml.Node) {
	switch n.Kind {
	case yaml.MappingNode:
		buf.WriteByte('{')
		for i := 0; i+1 < len(n.Content); i += 2 {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeString(buf, n.Content[i].Value)
			buf.WriteByte(':')
			writeJSON(buf, n.Content[i+1])
		}
		buf.WriteByte('}')
	case yaml.SequenceNode:
		buf.WriteByte('[')
		for i, c := range n.Content {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeJSON(buf, c)
		}
		buf.WriteByte(']')
	default:
		if n.Tag == "!!str" {
			writeString(buf, n.Value)
			return
		}
		buf.WriteString(n.Value)
	}
}

func writeString(buf *bytes.Buffer, s string) {
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	enc.Encode(s) // cannot fail for a string
	buf.Truncate(buf.Len() - 1)
}

// WriteTable writes rows under header with aligned columns; an empty cell
// is shown as "-". Cells are written as Printable makes them: they carry
// text agents and relays chose (hostnames, versions, errors), which must
// neither start a row of its own nor reach the terminal as control
// sequences.
func WriteTable(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			cells[i] = Dash(Printable(c))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// WriteFields writes name/value pairs, one a line, values aligned ("tenant:
// acme"); an empty value is shown as "-". Values are written as Printable
// makes them (see WriteTable).
func WriteFields(w io.Writer, fields [][2]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, f := range fields {
		fmt.Fprintf(tw, "%s:\t%s\n", f[0], Dash(Printable(f[1])))
	}
	return tw.Flush()
}

// Dash is s, or "-" when s is empty.
func Dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
