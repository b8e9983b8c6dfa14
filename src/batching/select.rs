//! Length-aware batch formation: which queued inputs share one device batch.
//!
//! A padded backend (candle, and so CUDA) computes `inputs x longest input` tokens, so a
//! first-come batch of mixed texts is mostly padding: one 256-token passage pads sixty short
//! queries to 256 each. Here the oldest queued input always goes (nothing starves: every input
//! becomes the oldest), and the rest of the batch is chosen among the oldest [`WINDOW`] queued
//! inputs to maximise `real tokens - padding tokens` under the budget. An input adds to that
//! score only when it is longer than half the batch's longest, so batches group similar lengths,
//! and when everything fits in one efficient batch, everything goes.
//!
//! Backends that do not pad (the native CPU backend: dense layers on the packed tokens,
//! attention per sequence) take inputs first come instead ([`first_come`]): for them splitting by
//! length only makes batches smaller and makes long texts wait.

/// How many queued inputs (oldest first) are considered for one batch: bounds the work done
/// under the queue lock.
pub const WINDOW: usize = 4096;

/// Picks one batch from `lens` (token counts of queued inputs, oldest first; `lens[0]` always
/// goes) with at most `max_inputs` inputs and `inputs x longest <= budget` (a lone input may
/// exceed it). Returns the chosen indices in ascending (queue) order.
pub fn pick(lens: &[usize], budget: usize, max_inputs: usize) -> Vec<usize> {
    let n = lens.len().min(WINDOW);
    if n == 0 {
        return Vec::new();
    }
    let anchor = lens[0];
    let max_inputs = max_inputs.max(1);
    // Every input but the anchor, shortest first; among equal lengths the oldest last, so that
    // taking from the top takes the longest and, among ties, the oldest.
    let mut order: Vec<usize> = (1..n).collect();
    order.sort_unstable_by(|&i, &j| lens[i].cmp(&lens[j]).then(j.cmp(&i)));
    let mut prefix = Vec::with_capacity(order.len() + 1);
    prefix.push(0usize);
    for &i in &order {
        prefix.push(prefix[prefix.len() - 1] + lens[i]);
    }

    // Candidates for the batch's longest input: the anchor's length and every longer length.
    // For each, the best companions are the longest inputs no longer than it (top of `order`).
    let mut best: Option<(i64, usize, usize)> = None; // (score, top position + 1, count)
    let mut consider = |longest: usize, end: usize| {
        let cap = (budget / longest.max(1)).clamp(1, max_inputs);
        // Companions longer than half of `longest` (each then adds more real tokens than padding).
        let lo = order[..end].partition_point(|&i| 2 * lens[i] <= longest);
        let k = (end - lo).min(cap - 1);
        let real = (anchor + prefix[end] - prefix[end - k]) as i64;
        let padded = ((k + 1) * longest) as i64;
        let score = 2 * real - padded;
        if best.is_none_or(|(s, _, _)| score > s) {
            best = Some((score, end, k));
        }
    };
    // The anchor's own length: companions no longer than it.
    consider(anchor, order.partition_point(|&i| lens[i] <= anchor));
    let mut end = order.partition_point(|&i| lens[i] <= anchor);
    while end < order.len() {
        let len = lens[order[end]];
        end += order[end..].partition_point(|&i| lens[i] == len);
        consider(len, end);
    }
    let (_, end, k) = best.unwrap_or((0, 0, 0));
    let mut chosen: Vec<usize> = std::iter::once(0)
        .chain(order[end - k..end].iter().copied())
        .collect();
    chosen.sort_unstable();
    chosen
}

/// Up to `slots` inputs of `lens` (oldest `WINDOW`) no longer than `longest` and longer than
/// half of it, longest first, among equal lengths the oldest: what fills the rest of a batch
/// whose longest input is already fixed. Returns indices in ascending (queue) order.
pub fn fill(lens: &[usize], longest: usize, slots: usize) -> Vec<usize> {
    let mut fit: Vec<usize> = (0..lens.len().min(WINDOW))
        .filter(|&i| lens[i] <= longest && 2 * lens[i] > longest)
        .collect();
    fit.sort_unstable_by(|&i, &j| lens[j].cmp(&lens[i]).then(i.cmp(&j)));
    fit.truncate(slots);
    fit.sort_unstable();
    fit
}

/// First come, first served, for backends that do not pad, so a batch costs its real tokens:
/// the longest run of `lens` from the front that keeps the batch, which already holds `count`
/// inputs and `tokens` tokens, within `budget` tokens and `max_inputs` inputs; an empty batch
/// always takes the first input. Returns the indices taken.
pub fn first_come(
    lens: &[usize],
    budget: usize,
    max_inputs: usize,
    count: usize,
    tokens: usize,
) -> Vec<usize> {
    let (mut taken, mut tokens) = (0, tokens);
    for &len in lens.iter().take(WINDOW) {
        let fits = tokens + len <= budget && count + taken < max_inputs.max(1);
        if !fits && count + taken > 0 {
            break;
        }
        tokens += len;
        taken += 1;
    }
    (0..taken).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(lens: &[usize], chosen: &[usize]) -> usize {
        chosen.len() * chosen.iter().map(|&i| lens[i]).max().unwrap_or(0)
    }

    #[test]
    fn everything_goes_when_it_fits_in_one_efficient_batch() {
        let lens = [12, 9, 14, 11, 10];
        assert_eq!(pick(&lens, 1000, 100), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_long_input_does_not_pad_short_ones() {
        // First come, first served would pad all four to 40 (160 tokens for 70 real).
        let lens = [10, 10, 40, 10];
        assert_eq!(pick(&lens, 100, 100), vec![0, 1, 3]);
        assert_eq!(pick(&[40], 100, 100), vec![0]);
    }

    #[test]
    fn the_oldest_input_always_goes_even_alone_over_budget() {
        assert_eq!(pick(&[300, 5, 5, 5], 100, 100), vec![0]);
        assert_eq!(pick(&[5, 300, 300], 100, 100), vec![0]);
    }

    #[test]
    fn limits_hold_and_long_queues_give_full_low_padding_batches() {
        // A corpus-like mix: half queries, a third sentences, the rest passages.
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let mut lens: Vec<usize> = (0..3000)
            .map(|i| match i % 6 {
                0..=2 => 6 + next() % 12,
                3 | 4 => 30 + next() % 50,
                _ => 150 + next() % 107,
            })
            .collect();
        let (budget, max_inputs) = (4096, 200);
        let (mut real, mut pad) = (0, 0);
        while !lens.is_empty() {
            let chosen = pick(&lens, budget, max_inputs);
            assert_eq!(chosen[0], 0, "the oldest goes");
            assert!(chosen.windows(2).all(|w| w[0] < w[1]));
            assert!(chosen.len() <= max_inputs);
            assert!(chosen.len() == 1 || padded(&lens, &chosen) <= budget);
            real += chosen.iter().map(|&i| lens[i]).sum::<usize>();
            pad += padded(&lens, &chosen);
            for &i in chosen.iter().rev() {
                lens.remove(i);
            }
        }
        // First come, first served on this mix pads to ~30 % efficiency.
        let efficiency = real as f64 / pad as f64;
        assert!(efficiency > 0.85, "efficiency {efficiency:.3}");
    }

    #[test]
    fn first_come_takes_the_front_while_it_fits() {
        let lens = [10, 10, 40, 10];
        assert_eq!(first_come(&lens, 60, 100, 0, 0), vec![0, 1, 2]);
        assert_eq!(first_come(&lens, 70, 100, 0, 0), vec![0, 1, 2, 3]);
        assert_eq!(first_come(&lens, 200, 2, 0, 0), vec![0, 1]);
        assert_eq!(first_come(&lens, 200, 3, 2, 25), vec![0]);
        // Over budget alone: still goes when the batch is empty, not when it is not.
        assert_eq!(first_come(&[300, 5], 100, 100, 0, 0), vec![0]);
        assert!(first_come(&[300, 5], 100, 100, 2, 10).is_empty());
    }

    #[test]
    fn fill_takes_the_longest_that_fit_oldest_first() {
        let lens = [3, 20, 12, 16, 16, 9];
        assert_eq!(fill(&lens, 16, 2), vec![3, 4]);
        assert_eq!(fill(&lens, 16, 10), vec![2, 3, 4, 5]);
        assert!(fill(&lens, 16, 0).is_empty());
    }
}
