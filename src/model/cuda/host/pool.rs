//! Bookkeeping of the fused backend's activation buffers, generic over the block type so it is
//! tested without a GPU (the device side, `fused/buffers.rs`, stores `CudaSlice`s in it).
//!
//! Why a pool: a device allocation per layer output is a driver call and, with cudarc's event
//! tracking, two events; a forward pass of a fixed model needs the same buffers every batch.
//! Buffers are kept per row width (`cols`); a request for `rows x cols` takes the smallest free
//! block of that width with enough rows. The pool records, per width, how many blocks were live
//! at once (`peak`): after the warm-up that is exactly the forward pass's working set, so
//! `peak x cols x element bytes` summed over widths is the activation memory per token, and
//! [`PoolState::reserve`] pre-sizes the pool for the whole token budget (nothing is allocated
//! on the hot path afterwards). A batch larger than the reservation grows the pool; nothing
//! ever shrinks per batch.

use std::collections::BTreeMap;

/// Rows are allocated in multiples of this, so nearby batch sizes share blocks.
pub const ROW_QUANTUM: usize = 64;

struct Width<B> {
    /// Free blocks and their capacity in rows.
    free: Vec<(B, usize)>,
    live: usize,
    peak: usize,
}

impl<B> Default for Width<B> {
    fn default() -> Self {
        Width {
            free: Vec::new(),
            live: 0,
            peak: 0,
        }
    }
}

/// The free lists and counters of one element type.
pub struct PoolState<B> {
    widths: BTreeMap<usize, Width<B>>,
    /// Every new block gets at least this many rows (the reserved token budget, + 1).
    reserved_rows: usize,
    elem_bytes: usize,
    held_bytes: u64,
    allocations: u64,
}

/// Blocks to allocate for a reservation: `count` blocks of `rows x cols` per entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub rows: usize,
    pub blocks: Vec<(usize, usize)>,
}

impl<B> PoolState<B> {
    pub fn new(elem_bytes: usize) -> Self {
        PoolState {
            widths: BTreeMap::new(),
            reserved_rows: 0,
            elem_bytes,
            held_bytes: 0,
            allocations: 0,
        }
    }

    /// Capacity in rows of a new block for a request of `rows`.
    pub fn rows_for(&self, rows: usize) -> usize {
        rows.max(self.reserved_rows)
            .max(1)
            .div_ceil(ROW_QUANTUM)
            .saturating_mul(ROW_QUANTUM)
    }

    fn bytes(&self, rows: usize, cols: usize) -> u64 {
        (rows as u64) * (cols as u64) * self.elem_bytes as u64
    }

    /// Borrows a block of at least `rows x cols` elements: the smallest free one that fits, else
    /// a new one from `alloc(elements)`. Returns the block and its capacity in rows.
    pub fn take<E>(
        &mut self,
        rows: usize,
        cols: usize,
        alloc: impl FnOnce(usize) -> Result<B, E>,
    ) -> Result<(B, usize), E> {
        let new_rows = self.rows_for(rows);
        let w = self.widths.entry(cols).or_default();
        let fit = w
            .free
            .iter()
            .enumerate()
            .filter(|(_, (_, cap))| *cap >= rows)
            .min_by_key(|(_, (_, cap))| *cap)
            .map(|(i, _)| i);
        let taken = match fit {
            Some(i) => w.free.swap_remove(i),
            None => {
                let block = alloc(new_rows.saturating_mul(cols.max(1)))?;
                self.held_bytes +=
                    (new_rows as u64) * (cols.max(1) as u64) * self.elem_bytes as u64;
                self.allocations += 1;
                (block, new_rows)
            }
        };
        let w = self.widths.entry(cols).or_default();
        w.live += 1;
        w.peak = w.peak.max(w.live);
        Ok(taken)
    }

    /// Returns a block; gives back a block for the caller to free when the width holds more
    /// free blocks than it ever needed at once (the smallest goes).
    pub fn give(&mut self, cols: usize, block: B, rows: usize) -> Option<B> {
        let w = self.widths.entry(cols).or_default();
        w.live = w.live.saturating_sub(1);
        w.free.push((block, rows));
        if w.free.len() + w.live <= w.peak.max(1) {
            return None;
        }
        let i = w
            .free
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, cap))| *cap)
            .map(|(i, _)| i)?;
        let (b, r) = w.free.swap_remove(i);
        self.held_bytes = self.held_bytes.saturating_sub(self.bytes(r, cols.max(1)));
        Some(b)
    }

    /// Activation bytes per row (token) of the working set seen so far.
    pub fn bytes_per_row(&self) -> u64 {
        self.widths
            .iter()
            .map(|(&cols, w)| self.bytes(w.peak, cols.max(1)))
            .sum()
    }

    /// Bytes of every block the pool holds (free and lent).
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// Device allocations made so far (for logs and tests: constant after the reservation).
    pub fn allocations(&self) -> u64 {
        self.allocations
    }

    /// Sizes the pool for batches of up to `tokens` tokens: returns the free blocks too small
    /// to keep (to free) and the blocks to allocate so each width has its peak count of blocks
    /// with `tokens + 1` rows. Insert the new blocks with [`PoolState::insert`].
    pub fn reserve(&mut self, tokens: usize) -> (Vec<B>, Reservation) {
        self.reserved_rows = tokens.saturating_add(1);
        let rows = self.rows_for(0);
        let mut dropped = Vec::new();
        let mut blocks = Vec::new();
        let mut freed = 0u64;
        for (&cols, w) in self.widths.iter_mut() {
            let keep: Vec<(B, usize)> = std::mem::take(&mut w.free)
                .into_iter()
                .filter_map(|(b, r)| {
                    if r >= rows {
                        Some((b, r))
                    } else {
                        freed += (r as u64) * (cols.max(1) as u64);
                        dropped.push(b);
                        None
                    }
                })
                .collect();
            w.free = keep;
            let need = w.peak.saturating_sub(w.free.len() + w.live);
            if need > 0 {
                blocks.push((cols, need));
            }
        }
        self.held_bytes = self
            .held_bytes
            .saturating_sub(freed * self.elem_bytes as u64);
        (dropped, Reservation { rows, blocks })
    }

    /// Adds a block allocated for a [`Reservation`] (`rows x cols`).
    pub fn insert(&mut self, cols: usize, block: B, rows: usize) {
        self.held_bytes += self.bytes(rows, cols.max(1));
        self.allocations += 1;
        self.widths
            .entry(cols)
            .or_default()
            .free
            .push((block, rows));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake allocator: blocks are numbered, sizes recorded.
    struct Fake {
        next: u32,
        sizes: Vec<usize>,
    }

    impl Fake {
        fn alloc(&mut self, n: usize) -> Result<u32, ()> {
            self.next += 1;
            self.sizes.push(n);
            Ok(self.next)
        }
    }

    /// One "forward": the live pattern of a post-norm encoder layer (x, qkv, ctx, h1, inter,
    /// new x) at `t` tokens, hidden 4, intermediate 16.
    fn forward(p: &mut PoolState<u32>, f: &mut Fake, t: usize) {
        let mut take = |p: &mut PoolState<u32>, cols| {
            let (b, r) = p.take(t, cols, |n| f.alloc(n)).unwrap();
            (cols, b, r)
        };
        let x = take(p, 4);
        let qkv = take(p, 12);
        let ctx = take(p, 4);
        p.give(qkv.0, qkv.1, qkv.2);
        let h1 = take(p, 4);
        let inter = take(p, 16);
        let x2 = take(p, 4);
        for (c, b, r) in [x, ctx, h1, inter, x2] {
            p.give(c, b, r);
        }
    }

    #[test]
    fn the_working_set_is_reused_and_measured() {
        let mut p = PoolState::new(2);
        let mut f = Fake {
            next: 0,
            sizes: vec![],
        };
        forward(&mut p, &mut f, 100);
        assert_eq!(p.allocations(), 6);
        // Peaks: width 4 x 4 live, width 12 x 1, width 16 x 1 -> (16 + 12 + 16) * 2 bytes.
        assert_eq!(p.bytes_per_row(), (4 * 4 + 12 + 16) * 2);
        // Rows are quantised: 100 -> 128.
        assert!(f.sizes.iter().all(|&n| n % 128 == 0));
        // Same or smaller batches allocate nothing.
        forward(&mut p, &mut f, 100);
        forward(&mut p, &mut f, 7);
        assert_eq!(p.allocations(), 6);
        // A larger batch grows (new blocks), and the too-small ones are freed on return.
        forward(&mut p, &mut f, 1000);
        assert_eq!(p.allocations(), 12);
        forward(&mut p, &mut f, 1000);
        forward(&mut p, &mut f, 5);
        assert_eq!(p.allocations(), 12);
        assert_eq!(p.held_bytes(), 1024 * (4 * 4 + 12 + 16) * 2);
    }

    #[test]
    fn reservation_presizes_every_width_for_the_budget() {
        let mut p = PoolState::new(2);
        let mut f = Fake {
            next: 0,
            sizes: vec![],
        };
        forward(&mut p, &mut f, 8);
        let (dropped, r) = p.reserve(4095);
        assert_eq!(dropped.len(), 6, "the warm-up's blocks are too small");
        assert_eq!(r.rows, 4096);
        assert_eq!(r.blocks, vec![(4, 4), (12, 1), (16, 1)]);
        for (cols, n) in r.blocks {
            for _ in 0..n {
                let b = f.alloc(r.rows * cols).unwrap();
                p.insert(cols, b, r.rows);
            }
        }
        let before = p.allocations();
        forward(&mut p, &mut f, 4095);
        forward(&mut p, &mut f, 300);
        assert_eq!(p.allocations(), before, "no allocation within the budget");
        assert_eq!(p.held_bytes(), 4096 * (4 * 4 + 12 + 16) * 2);
        // A second reservation for the same budget keeps everything.
        let (dropped, r) = p.reserve(4095);
        assert!(dropped.is_empty() && r.blocks.is_empty());
    }

    #[test]
    fn a_failed_allocation_leaves_the_counters_alone() {
        let mut p: PoolState<u32> = PoolState::new(4);
        assert!(p.take(10, 3, |_| Err::<u32, _>("oom")).is_err());
        assert_eq!(p.allocations(), 0);
        assert_eq!(p.bytes_per_row(), 0);
        assert_eq!(p.held_bytes(), 0);
    }
}
