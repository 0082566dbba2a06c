//! Column buffers that come back when the batch made of them is dropped.
//!
//! A finished batch goes to Python and is freed there, on whichever thread drops it last. Freed,
//! its pages went back to the OS at once (mimalloc `purge_delay` 0, lib.rs) and the next batch's
//! fresh buffers faulted them in again: most of the reader's page faults. Each column instead
//! hands its vectors out as Arrow buffers whose owner returns the vector to the column's pool when
//! dropped; the next batch reuses it with its pages still resident. At most `KEEP` vectors wait per
//! pool; the rest are freed as before, and all of them when the decoder is gone.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

use arrow_buffer::Buffer;

/// Vectors kept per pool: one batch in the engine's hands and one being decoded need no more.
const KEEP: usize = 2;

type Free = Mutex<Vec<Box<dyn Any + Send>>>;

/// Returned vectors of one column buffer (any element type; a pool serves one buffer of a column).
#[derive(Default)]
pub struct Pool {
    free: Arc<Free>,
}

impl Pool {
    /// An empty vector with room for `n` values: a returned one when there is one.
    pub fn take<T: Send + 'static>(&self, n: usize) -> Vec<T> {
        let returned = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
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
            let mut free = pool.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < KEEP {
                free.push(Box::new(v));
            }
        }
    }
}
