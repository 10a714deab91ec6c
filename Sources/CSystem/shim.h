// Declarations Swift's Glibc module lacks. Glibc declares these only under _GNU_SOURCE, which
// the Glibc module is not built with, so we declare them here with their glibc prototypes.
#ifndef SWIFT_CNI_CSYSTEM_SHIM_H
#define SWIFT_CNI_CSYSTEM_SHIM_H

#include <sched.h>
#include <fcntl.h>

// setns(2): enter a network namespace on the calling thread (Namespace.run).
extern int setns(int fd, int nstype);
// pipe2(2): pipes that are close-on-exec from birth, so a child spawned by another thread
// never inherits them (which would keep a pipe open and hang the reader).
extern int pipe2(int pipefd[2], int flags);

#ifndef CLONE_NEWNET
#define CLONE_NEWNET 0x40000000
#endif
static const int cni_clone_newnet = CLONE_NEWNET;

// O_TMPFILE (Linux 3.11, _GNU_SOURCE only): a file created without a name in a directory, for
// lease content written before the store's lock is taken (LeaseStore). The kernel's value.
#ifndef O_TMPFILE
#define O_TMPFILE (020000000 | O_DIRECTORY)
#endif
static const int cni_o_tmpfile = O_TMPFILE;

#endif
