//go:build !unix && !windows

package quic

import "errors"

func socketBuffers(uintptr) (int, int, error) { return 0, 0, errors.ErrUnsupported }

func forceBuffers(uintptr, int) {}

const raiseHint = "this system's socket buffer sizes cannot be read"
