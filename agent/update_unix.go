//go:build unix

package agent

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/minio/selfupdate"
)

// installBinary moves the checked binary at newPath in at opts.TargetPath
// so that the path holds a whole binary, the old one or the new one, at
// every moment, whenever the process is killed or the machine loses
// power:
//
//  1. the new binary's bytes are synced to disk;
//  2. the binary gets a second name, opts.OldSavePath, kept for a
//     rollback (a hard link; a synced copy where the file system refuses
//     hard links);
//  3. the new binary is renamed over the binary: one atomic step;
//
// and the directory is synced after each step, so that they reach the
// disk in this order. (selfupdate.CommitBinary renames the binary away
// first and the new one in second: a kill between the two leaves no
// binary for the service to start.)
func installBinary(newPath string, opts selfupdate.Options) error {
	if err := syncFile(newPath); err != nil {
		return fmt.Errorf("sync the new binary: %w", err)
	}
	if err := keepPrevious(opts.TargetPath, opts.OldSavePath); err != nil {
		return fmt.Errorf("keep the running binary as %s: %w", opts.OldSavePath, err)
	}
	if err := rename(newPath, opts.TargetPath); err != nil {
		return fmt.Errorf("move the new binary in: %w", err)
	}
	syncDir(filepath.Dir(opts.TargetPath))
	return nil
}

// keepPrevious gives the binary at exe the name previous as well,
// replacing an older previous binary.
func keepPrevious(exe, previous string) error {
	if err := os.Remove(previous); err != nil && !os.IsNotExist(err) {
		return err
	}
	if lerr := os.Link(exe, previous); lerr != nil {
		// A file system without hard links (FAT, some network and FUSE
		// file systems): copy.
		if err := copyFileSync(exe, previous); err != nil {
			os.Remove(previous)
			return fmt.Errorf("%v; and copying it: %w", lerr, err)
		}
	}
	syncDir(filepath.Dir(previous))
	return nil
}

// copyFileSync copies src to dst, with src's permissions, and syncs dst.
func copyFileSync(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// syncFile flushes the file at path to disk.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// restoreBinary renames previous over binary: one atomic step, so that the
// path holds the new binary or the previous one at every moment. The new
// binary is dropped.
func restoreBinary(previous, binary string) error {
	if err := rename(previous, binary); err != nil {
		return err
	}
	syncDir(filepath.Dir(binary))
	return nil
}
