//! A device batch as the model sees it: sequences laid end to end, no padding.

/// Sequence `i` is `offsets[i]..offsets[i+1]` of `ids`, `type_ids` and `positions`; positions
/// count from 0 within each sequence (families add their own offsets, e.g. RoBERTa's).
#[derive(Debug, Default, Clone)]
pub struct PackedBatch {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub offsets: Vec<usize>,
}

impl PackedBatch {
    pub fn with_capacity(seqs: usize, tokens: usize) -> Self {
        let mut offsets = Vec::with_capacity(seqs + 1);
        offsets.push(0);
        Self {
            ids: Vec::with_capacity(tokens),
            type_ids: Vec::with_capacity(tokens),
            positions: Vec::with_capacity(tokens),
            offsets,
        }
    }

    /// Appends one sequence (`type_ids` may be empty: all zero).
    pub fn push(&mut self, ids: &[u32], type_ids: &[u32]) {
        self.ids.extend_from_slice(ids);
        if type_ids.len() == ids.len() {
            self.type_ids.extend_from_slice(type_ids);
        } else {
            self.type_ids.extend(std::iter::repeat_n(0, ids.len()));
        }
        self.positions.extend(0..ids.len() as u32);
        self.offsets.push(self.ids.len());
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Each sequence's length.
    pub fn lens(&self) -> impl Iterator<Item = usize> + '_ {
        self.offsets.windows(2).map(|w| w[1] - w[0])
    }

    /// The longest sequence.
    pub fn longest(&self) -> usize {
        self.lens().max().unwrap_or(0)
    }

    /// Sequence `i`'s token range.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.offsets[i]..self.offsets[i + 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_batch_offsets_and_positions() {
        let mut b = PackedBatch::with_capacity(2, 5);
        b.push(&[101, 7, 102], &[]);
        b.push(&[101, 102], &[0, 0]);
        assert_eq!(b.offsets, vec![0, 3, 5]);
        assert_eq!(b.positions, vec![0, 1, 2, 0, 1]);
        assert_eq!(b.type_ids, vec![0; 5]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.tokens(), 5);
        assert_eq!(b.longest(), 3);
        assert_eq!(b.range(1), 3..5);
    }
}
