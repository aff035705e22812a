//! The C library calls `dlock` needs and std does not offer: signalling a process, and asking
//! the kernel to kill the child when `dlock` dies. Each says why it is sound.
#![allow(unsafe_code)]

/// Sends `signal` to process `pid` (or, for a negative `pid`, to that process group);
/// whether it was delivered.
pub(crate) fn kill(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) takes two integers and reads or writes no memory of this process.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Makes the command's process die with SIGKILL when `dlock` dies, even by SIGKILL, so a
/// child never runs on without the lock its parent held.
///
/// `PR_SET_PDEATHSIG` fires when the thread that forked the child exits, not the process:
/// `dlock` forks from its only runtime thread, the main thread, which lives as long as the
/// process. A parent that died between the fork and the `prctl` is caught by comparing the
/// child's parent with the one it was forked from.
pub(crate) fn die_with_parent(command: &mut tokio::process::Command) {
    let parent = i32::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // functions may be called: it calls prctl(2), getppid(2), getpid(2) and kill(2), all of
    // them async-signal-safe, and allocates nothing (the error path reads errno only).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
}
