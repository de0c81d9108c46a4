package test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// docFiles are the project's documents whose links are checked.
var docFiles = []string{"README.md", "docs/performance.md", "docs/scale.md", "third_party/yamux/TETHER.md"}

// TestDocLinks: every relative link in the project's documents names a
// file that exists and, when it has a fragment, a heading of that file, as
// GitHub renders it: a reader following a link never lands on a missing
// page or the top of the wrong one.
func TestDocLinks(t *testing.T) {
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	anchors := map[string]map[string]bool{}
	anchorsOf := func(path string) map[string]bool {
		if a, ok := anchors[path]; ok {
			return a
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		a := headingAnchors(string(b))
		anchors[path] = a
		return a
	}
	checked := 0
	for _, f := range docFiles {
		path := filepath.Join("..", f)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(outsideCode(string(b)), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, frag, _ := strings.Cut(target, "#")
			dest := path
			if file != "" {
				dest = filepath.Join(filepath.Dir(path), file)
			}
			checked++
			if _, err := os.Stat(dest); err != nil {
				t.Errorf("%s links to %s: no such file", f, target)
				continue
			}
			if frag != "" && strings.HasSuffix(dest, ".md") && !anchorsOf(dest)[frag] {
				t.Errorf("%s links to %s: %s has no heading with that anchor", f, target, filepath.Base(dest))
			}
		}
	}
	if checked < 20 {
		t.Fatalf("checked %d links; the documents have more: is the link pattern wrong?", checked)
	}
	t.Logf("%d relative links checked in %d documents", checked, len(docFiles))
}

// outsideCode is a markdown document with its fenced code blocks blanked.
func outsideCode(doc string) string {
	var out strings.Builder
	fenced := false
	for line := range strings.Lines(doc) {
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
			continue
		}
		if !fenced {
			out.WriteString(line)
		}
	}
	return out.String()
}

// headingAnchors are the fragments GitHub gives a document's headings:
// lower case, punctuation dropped, spaces as hyphens, and "-1", "-2" … on
// repeats.
func headingAnchors(doc string) map[string]bool {
	heading := regexp.MustCompile(`^#{1,6} (.+)$`)
	seen := map[string]int{}
	out := map[string]bool{}
	for line := range strings.Lines(outsideCode(doc)) {
		m := heading.FindStringSubmatch(strings.TrimRight(line, "\n"))
		if m == nil {
			continue
		}
		var a strings.Builder
		for _, r := range strings.ToLower(strings.TrimSpace(m[1])) {
			switch {
			case r == ' ':
				a.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				a.WriteRune(r)
			}
		}
		id := a.String()
		if n := seen[id]; n > 0 {
			out[fmt.Sprintf("%s-%d", id, n)] = true
		} else {
			out[id] = true
		}
		seen[id]++
	}
	return out
}
