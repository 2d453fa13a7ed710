//! Allocation ids noted when a sliced job began (the state snapshot, a listing), handed
//! out a bounded slice at a time so that the job runs between the worker's batches of
//! packets instead of holding them up.

/// The ids, and how many were handed out.
#[derive(Debug)]
pub struct IdCursor {
    ids: Vec<u64>,
    next: usize,
}

impl IdCursor {
    /// A cursor over `ids`, in the given order.
    pub fn new(ids: Vec<u64>) -> Self {
        IdCursor { ids, next: 0 }
    }

    /// Whether every id was handed out.
    pub fn is_done(&self) -> bool {
        self.next >= self.ids.len()
    }

    /// The next (at most) `max` ids; empty once done.
    pub fn next_slice(&mut self, max: usize) -> &[u64] {
        let start = self.next;
        self.next = self.ids.len().min(start.saturating_add(max));
        &self.ids[start..self.next]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_every_id_once_in_order() {
        let mut c = IdCursor::new(vec![5, 6, 7, 8, 9]);
        assert!(!c.is_done());
        assert_eq!(c.next_slice(2), &[5, 6]);
        assert_eq!(c.next_slice(2), &[7, 8]);
        assert!(!c.is_done());
        assert_eq!(c.next_slice(usize::MAX), &[9]);
        assert!(c.is_done());
        assert!(c.next_slice(3).is_empty());
        assert!(IdCursor::new(Vec::new()).is_done());
    }
}
