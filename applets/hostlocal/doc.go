// Package hostlocal is the host-local IPAM applet: it hands out addresses
// from configured ranges and keeps its reservations in files on the node,
// exactly where and as the reference host-local keeps them, so that a node
// can switch from the reference to cnibox and back and keep every
// reservation.
//
// # On-disk format (the reference's, unchanged)
//
//	<dataDir>/<network>/<ip>                  "<containerID>\r\n<ifname>", mode 0600
//	                                          (files of old versions: "<containerID>")
//	<dataDir>/<network>/last_reserved_ip.<n>  last address reserved from range set n
//	<dataDir>/<network>/lock                  flock'd by every caller, both plugins
//
// The reservation files are the truth. The reference finds an attachment's
// addresses by reading every file of the directory, under the lock, on
// every ADD (the duplicate check) and every DEL: O(reservations) per call,
// half a second at 65k, serialised per network.
//
// # The index
//
// cnibox keeps an index beside the network's directory, where the
// reference never looks (network names start with a letter or digit):
//
//	<dataDir>/.cnibox/<network>/index   an on-disk open-addressing hash table
//	                                    (table.go): attachment → its addresses
//	<dataDir>/.cnibox/<network>/stamp   the state of the network directory and
//	                                    of the index file the index was last
//	                                    known to match
//
// The key is a hash of (containerID, ifname), or of the containerID alone for
// old id-only files. ADD's duplicate check and DEL read one or two 128-byte
// slots (pread) and then only the reservation files they name; updates are
// pwrites of a slot and the header. No directory is listed and no file is
// created in the index per attachment, so ADD and DEL cost the same at 250
// or 65k reservations, and a rebuild writes one (sparse) file.
//
// The index is never trusted blindly:
//
//   - Every file a record names is read and compared with the attachment
//     before it is used or removed. A record naming a file the files do not
//     give the attachment, or a slot that does not decode, means the index
//     is wrong: it is rebuilt and the lookup repeated.
//   - The stamp holds device, inode (and for the index, size) and mtime of
//     the network directory and of the index file. Any change to either — a
//     reservation made or released by the reference plugin, by an operator,
//     a directory wiped and recreated, an index file replaced or written to
//     — changes one of them. When the stamp does not match (or is missing)
//     at the start of a call, the index is rebuilt from the files (one scan,
//     what the reference does on every call) before the call goes on. A
//     rebuild writes a fresh index file and renames it into place.
//   - A call writes the stamp only at its end, after every file and index
//     change (in place: a torn stamp matches nothing and only costs a
//     rebuild), and removes it when anything failed half-way. A process
//     killed in the middle leaves the directory or the index changed and the
//     old stamp behind: the next call sees the mismatch and rebuilds. An
//     empty reservation file (a writer killed between creating and filling
//     it) names nobody; the rebuild removes it.
//   - Coarse timestamps: on filesystems whose mtime ticks with the kernel's
//     coarse clock (tmpfs, kernels without multigrain timestamps), a change
//     later in the same tick as ours would leave the mtime unchanged. When the
//     directory's or the index's mtime is the current coarse time at commit,
//     the call sets it one nanosecond back (utimensat, with the lock held): every later
//     change is stamped with the current time or later, so it shows. The same
//     is done for an mtime with no nanoseconds, which may come from a
//     filesystem that keeps whole seconds.
//
// All of this happens under the reference's flock on <network>/lock, held
// for the whole call (the reference holds it per range set). The wait for
// it is bounded (CNIBOX_HOSTLOCAL_LOCK_TIMEOUT, default 30s): a wedged lock
// is answered with "try again" (code 11), never with a hang.
//
// # GC and STATUS
//
// GC (spec 1.1) scans the directory, removes every reservation whose
// attachment is not valid (id-only files are kept when their container ID
// is valid; empty files are removed), never touching the lock,
// last_reserved_ip.*, files that are not named by an address, or any other
// network's directory; then it rebuilds the index. STATUS fails with code
// 50 when the data dir is not a writable directory or a range set has no
// free address, and names which.
package hostlocal
