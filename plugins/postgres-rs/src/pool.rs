//! Column buffers that come back when the batch made of them is dropped.
//!
//! A finished batch goes to Python and is freed there, on whichever thread drops it last. Freed,
//! its pages went back to the OS at once (mimalloc `purge_delay` 0, lib.rs) and the next batch's
//! fresh buffers faulted them in again: most of the reader's page faults. Each column instead
//! hands its vectors out as Arrow buffers whose owner returns the vector to the column's pool when
//! dropped; the next batch reuses it with its pages still resident. At most `KEEP` vectors wait per
//! pool, and at most [`WAITING_MAX`] bytes in all pools of the process (divided by the streams
//! running); the rest are freed as before, and all of them when the decoder is gone.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arrow_buffer::Buffer;

/// Vectors kept per pool: one batch in the engine's hands and one being decoded need no more.
const KEEP: usize = 2;

/// Bytes (capacity) of the vectors waiting in all pools of the process together, when one stream
/// runs: its two spare batches (two 16,384-row batches of the 50-column benchmark table are
/// ~23 MB). With `n` streams running (the partitions of a parallel read) the cap is `n` times
/// smaller, so the spare vectors of all of them together shrink as they are added: each
/// partition's pools used to hold up to two of its batches, which `engine.read_mb` does not
/// count (+18 MB at parallelism 8, over 256 MB; docs/performance.md, "postgres-rs, session 7").
/// A vector returned while the total is at the cap is freed.
const WAITING_MAX: usize = 24 << 20;
static WAITING: AtomicUsize = AtomicUsize::new(0);
/// Streams (decoders) alive in the process.
static STREAMS: AtomicUsize = AtomicUsize::new(0);

fn waiting_max() -> usize {
    WAITING_MAX / STREAMS.load(Ordering::Relaxed).max(1)
}

/// One running stream, counted while it lives (see [`WAITING_MAX`]).
pub struct Stream(());

impl Stream {
    pub fn start() -> Stream {
        STREAMS.fetch_add(1, Ordering::Relaxed);
        Stream(())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Returned vectors with their size in bytes; what is left is freed (and uncounted) with the pool.
#[derive(Default)]
struct Free {
    vecs: Mutex<Vec<(Box<dyn Any + Send>, usize)>>,
}

impl Drop for Free {
    fn drop(&mut self) {
        let vecs = self.vecs.get_mut().unwrap_or_else(|p| p.into_inner());
        let bytes: usize = vecs.iter().map(|(_, n)| n).sum();
        WAITING.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Count `bytes` as waiting if the total stays within the cap.
fn admit(bytes: usize) -> bool {
    WAITING
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| w.checked_add(bytes).filter(|&t| t <= waiting_max()))
        .is_ok()
}

/// Returned vectors of one column buffer (any element type; a pool serves one buffer of a column).
#[derive(Default)]
pub struct Pool {
    free: Arc<Free>,
}

impl Pool {
    /// An empty vector with room for `n` values: a returned one when there is one.
    pub fn take<T: Send + 'static>(&self, n: usize) -> Vec<T> {
        let returned = self.free.vecs.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let returned = returned.map(|(b, bytes)| {
            WAITING.fetch_sub(bytes, Ordering::Relaxed);
            b
        });
        let mut v = returned.and_then(|b| b.downcast::<Vec<T>>().ok()).map_or_else(Vec::new, |b| *b);
        v.clear();
        v.reserve(n);
        v
    }

    /// An Arrow buffer over `v`'s values that returns `v` to this pool when the last user drops it.
    pub fn buffer<T: Send + Sync + std::panic::RefUnwindSafe + 'static>(&self, v: Vec<T>) -> Buffer {
        let len = std::mem::size_of_val(v.as_slice());
        let ptr = NonNull::new(v.as_ptr() as *mut u8).expect("a Vec's pointer is never null");
        let owner = Arc::new(Returned { vec: Some(v), pool: Arc::downgrade(&self.free) });
        // SAFETY: `ptr` points to `len` initialised bytes owned by the vector inside `owner`, which
        // the buffer keeps alive (and does not move: a Vec's heap storage stays put).
        unsafe { Buffer::from_custom_allocation(ptr, len, owner) }
    }
}

struct Returned<T: Send + 'static> {
    vec: Option<Vec<T>>,
    pool: Weak<Free>,
}

impl<T: Send + 'static> Drop for Returned<T> {
    fn drop(&mut self) {
        if let (Some(v), Some(pool)) = (self.vec.take(), self.pool.upgrade()) {
            let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
            let mut free = pool.vecs.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < KEEP && admit(bytes) {
                free.push((Box::new(v), bytes));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_over_the_byte_cap_is_freed_not_kept() {
        let _stream = Stream::start();
        let pool = Pool::default();
        let big: Vec<u8> = Vec::with_capacity(WAITING_MAX + 1);
        drop(pool.buffer(big));
        assert!(pool.free.vecs.lock().unwrap().is_empty());
        assert_eq!(pool.take::<u8>(16).capacity(), 16);
        // A small one comes back (the cap is far from reached by this test's 4 KiB) and is reused.
        let small: Vec<u64> = Vec::with_capacity(512);
        let ptr = small.as_ptr();
        drop(pool.buffer(small));
        let again = pool.take::<u64>(100);
        assert_eq!(again.as_ptr(), ptr);
    }
}
