//go:build !unix

package filelock

// execChild: no exec in place here (an agent exits and is started again).
func execChild(string) {}
