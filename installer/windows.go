package installer

import (
	"crypto/sha1"
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf16"
)

// ServiceSID is the SID of the virtual account "NT SERVICE\<name>" that the
// Windows service runs as: S-1-5-80- followed by the SHA-1 of the
// upper-cased service name in UTF-16LE, read as five little-endian 32-bit
// numbers. Windows derives it the same way ("sc showsid <name>"), so it can
// be written into security descriptors before the service exists.
func ServiceSID(name string) string {
	u := utf16.Encode([]rune(strings.ToUpper(name)))
	buf := make([]byte, 2*len(u))
	for i, c := range u {
		binary.LittleEndian.PutUint16(buf[2*i:], c)
	}
	h := sha1.Sum(buf) //nolint:gosec // the algorithm Windows uses for service SIDs
	var b strings.Builder
	b.WriteString("S-1-5-80")
	for i := 0; i < 5; i++ {
		fmt.Fprintf(&b, "-%d", binary.LittleEndian.Uint32(h[4*i:]))
	}
	return b.String()
}

// WindowsAccount is the account the service runs as: its virtual account,
// which has no password, no interactive logon and no rights beyond those
// granted to it explicitly.
func WindowsAccount(name string) string { return `NT SERVICE\` + name }

// Security descriptors (SDDL) of the agent's directories on Windows. Each is
// protected (P: inherits nothing from its parent, so no broad "Users" entry
// of C:\ProgramData leaks in), owned by Administrators, and its entries are
// inherited by the files inside (OICI):
//
//   - state (key, certificates) and update staging: full control for
//     SYSTEM, Administrators and the service account; nobody else.
//   - config: full control for SYSTEM and Administrators, read for the
//     service; nobody else (a compromised agent cannot widen its own
//     allowlist).
//   - binary directory: full control for SYSTEM and Administrators, modify
//     for the service (self-update replaces the binary), read and execute
//     for Users.
func StateSDDL(serviceSID string) string {
	return "O:BAG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;" + serviceSID + ")"
}

// ConfigSDDL: see StateSDDL.
func ConfigSDDL(serviceSID string) string {
	return "O:BAG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FR;;;" + serviceSID + ")"
}

// BinSDDL: see StateSDDL.
func BinSDDL(serviceSID string) string {
	return "O:BAG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;0x1301bf;;;" + serviceSID + ")(A;OICI;FRFX;;;BU)"
}

// WindowsImagePath is the command line the service control manager runs
// (the service's ImagePath): the executable always in double quotes, so a
// path with spaces can never be read as a shorter program ("unquoted
// service path"), then each argument quoted when it needs to be, by the
// rules Windows programs parse their command line with.
func WindowsImagePath(exe string, args []string) (string, error) {
	if strings.ContainsAny(exe, "\"\r\n\x00") {
		return "", fmt.Errorf("executable path %q cannot be quoted", exe)
	}
	s := `"` + exe + `"`
	for _, a := range args {
		if strings.ContainsAny(a, "\r\n\x00") {
			return "", fmt.Errorf("service argument %q cannot be passed", a)
		}
		s += " " + windowsQuote(a)
	}
	return s, nil
}

// windowsQuote quotes one argument as syscall.EscapeArg does on Windows.
func windowsQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"") {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	slashes := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '\\':
			slashes++
		case '"':
			b.WriteString(strings.Repeat(`\`, slashes+1))
			slashes = 0
		default:
			slashes = 0
		}
		b.WriteByte(c)
	}
	b.WriteString(strings.Repeat(`\`, slashes))
	b.WriteByte('"')
	return b.String()
}
