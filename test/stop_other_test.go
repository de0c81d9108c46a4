//go:build !linux

package test

import "errors"

var errNoStop = errors.New("stopping a process is implemented on Linux only")

func stopProcess(int) error     { return errNoStop }
func continueProcess(int) error { return errNoStop }
