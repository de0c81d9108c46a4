package console

import (
	"net/url"
	"strings"
)

// maxNext bounds the length of a redirect target after login.
const maxNext = 2048

// safeNext reports whether next may be where a browser is sent after
// signing in: a path on this site and nothing else. It must parse with no
// scheme, host or user, start with "/", and contain no control character,
// no backslash and no "//" in its path, neither as written nor
// percent-encoded (once or several times over): browsers read "//host",
// "/\host", "/\t/host" and the like as another site, and a path that
// decodes to one may become one when something decodes it again.
func safeNext(next string) bool {
	if next == "" || len(next) > maxNext {
		return false
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" {
		return false
	}
	s := next
	for range 5 {
		if !localPathText(s) {
			return false
		}
		dec, err := url.PathUnescape(s)
		if err != nil {
			return false
		}
		if dec == s {
			return true
		}
		s = dec
	}
	return false // still encoded after five rounds: refuse rather than guess
}

// localPathText reports whether s, as text, starts with "/", has no "//"
// before its query, and holds no backslash or control character.
func localPathText(s string) bool {
	path, _, _ := strings.Cut(s, "?")
	if !strings.HasPrefix(path, "/") || strings.Contains(path, "//") {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '\\' || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}
