//go:build !linux

package test

import "syscall"

func childAttr() *syscall.SysProcAttr { return nil }
