//! The periodic TURN state saves, written by a thread of their own at the lowest CPU
//! priority (nice 19).
//!
//! Why: turning the state of 10 000 allocations into JSON (4.7 MB) and writing it took
//! about 60 ms of CPU on the bench machine, every 5 s. On the daemon's main thread,
//! which shares a core with a worker when the relay runs on few cores, the scheduler
//! handed it that time in slices of several milliseconds, during which the worker relayed
//! nothing and its AF_XDP receive ring overflowed: every save lost packets. At nice 19
//! the writer runs on what the workers leave, in short slices, and still makes progress
//! under full load (unlike `SCHED_IDLE`, which a busy worker would starve). The main
//! thread no longer waits for the write or the fsync either.
//!
//! One save at a time: while one is being written, the next periodic save is skipped
//! (the one after it comes [`super::state::SAVE_EVERY`] later). At shutdown the daemon
//! waits for the writer ([`StateWriter::finish`]) and then writes the last save itself,
//! at normal priority, so two writers never share the temporary file.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;

use super::state;
use crate::turn::snapshot::SavedAllocation;

/// The nice value of the writer thread.
const WRITER_NICE: i32 = 19;

/// The writer thread and the way to it.
pub(super) struct StateWriter {
    tx: Option<mpsc::SyncSender<Vec<SavedAllocation>>>,
    /// Set when a save is handed over, cleared when it is written.
    busy: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StateWriter {
    /// Starts the writer for the state file `path`.
    pub(super) fn start(path: PathBuf) -> std::io::Result<StateWriter> {
        let (tx, rx) = mpsc::sync_channel::<Vec<SavedAllocation>>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&busy);
        let thread = thread::Builder::new()
            .name("relay-state".into())
            .spawn(move || {
                if let Err(e) = lower_priority() {
                    tracing::debug!(error = %e, "state writer keeps the normal CPU priority");
                }
                let mut failing = false;
                while let Ok(all) = rx.recv() {
                    state::write(&path, all, &mut failing);
                    done.store(false, Ordering::Release);
                }
            })?;
        Ok(StateWriter {
            tx: Some(tx),
            busy,
            thread: Some(thread),
        })
    }

    /// Hands a save to the writer: the allocations `take` gathers, unless the previous
    /// save is still being written (then `take` is not called). True when one was
    /// handed over.
    pub(super) fn offer(&self, take: impl FnOnce() -> Option<Vec<SavedAllocation>>) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        if self.busy.load(Ordering::Acquire) {
            tracing::debug!("previous TURN state save still being written: this one skipped");
            return false;
        }
        let Some(all) = take() else {
            return false;
        };
        self.busy.store(true, Ordering::Release);
        if tx.try_send(all).is_err() {
            self.busy.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// Waits until the save being written (if any) is on disk and stops the thread.
    pub(super) fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("the TURN state writer thread panicked; its last save may be lost");
        }
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sets the calling thread's nice value to [`WRITER_NICE`] (on Linux the nice value
/// belongs to the thread: the workers keep theirs).
fn lower_priority() -> std::io::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: plain syscall on our own thread id; no memory is passed.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, WRITER_NICE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::snapshot::{Snapshot, boot_id};

    fn nice_of_this_thread() -> i32 {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        // SAFETY: plain syscall; -1 is also a valid answer, errno is not needed here.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) }
    }

    fn allocation(port: u16) -> SavedAllocation {
        SavedAllocation::bare(
            format!("192.0.2.1:{port}").parse().expect("addr"),
            "192.0.2.2:50000".parse().expect("addr"),
            u64::MAX,
        )
    }

    #[test]
    fn lowering_the_priority_touches_only_the_calling_thread() {
        let before = nice_of_this_thread();
        let inner = thread::spawn(|| {
            lower_priority().expect("setpriority");
            nice_of_this_thread()
        })
        .join()
        .expect("thread");
        assert_eq!(inner, WRITER_NICE);
        assert_eq!(
            nice_of_this_thread(),
            before,
            "the caller's nice is unchanged"
        );
    }

    #[test]
    fn a_handed_over_save_is_on_disk_after_finish_and_a_busy_writer_skips() {
        let dir = std::env::temp_dir().join(format!("relay-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state.json");
        let w = StateWriter::start(path.clone()).expect("start");
        assert!(w.offer(|| Some(vec![allocation(1000), allocation(1001)])));
        w.finish();
        let snap = Snapshot::read(&path, &boot_id())
            .expect("read")
            .expect("written");
        assert_eq!(snap.allocations.len(), 2);

        // While a save is being written, the next one is not even gathered.
        let w = StateWriter::start(path.clone()).expect("start");
        w.busy.store(true, Ordering::Release);
        let mut gathered = false;
        assert!(!w.offer(|| {
            gathered = true;
            Some(Vec::new())
        }));
        assert!(!gathered);
        // Nothing gathered (a worker did not answer): nothing handed over.
        w.busy.store(false, Ordering::Release);
        assert!(!w.offer(|| None));
        w.finish();
        let snap = Snapshot::read(&path, &boot_id())
            .expect("read")
            .expect("still there");
        assert_eq!(snap.allocations.len(), 2, "the previous save stays");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
