//! The benchmark corpus, generated deterministically (fixed seed, our own PRNG so a dependency
//! upgrade cannot change it): about half short queries (3-12 words), a third 30-60-word
//! sentences, the rest 150-300-word passages — a mean of about 63 tokens after truncation at 256
//! with a BERT word-piece tokenizer.

/// SplitMix64: tiny, fast and stable across versions.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

const WORDS: &str = "the of and to in is was for on that with as by it at from his an were are which this be \
has or had first one their its new after but who not they have her she two been other when there all during \
into school time may years more most only over city some world would where later up such used many can state \
about national out known university united then made three season film team group government series north \
south between team system company century american river part number both game war second before while \
however public under also called four each well through work album record music station law history early \
population area family water found home career including several life based village english county house \
since five among last general water model data network learning deep language question answer search index \
query document engine vector embedding server request latency memory cluster node pool spot instance price \
kubernetes container service traffic scaling metric signal energy market health science art design travel \
food coffee garden mountain ocean forest weather summer winter spring autumn morning evening night friend \
teacher student doctor patient hospital library museum theater concert festival holiday journey airport \
train station bridge road street building window door kitchen table chair computer phone screen keyboard \
software hardware program function variable compiler database storage backup security password account \
customer product order payment delivery shipping invoice report meeting project deadline budget strategy \
research experiment theory evidence result analysis method sample measure error accuracy precision recall \
quickly slowly carefully often never always sometimes usually rarely almost nearly really very quite rather \
good bad large small long short high low old young great little important different possible available \
free simple hard easy clear strong weak early late recent modern ancient local global social political \
economic cultural natural physical digital mobile remote private open closed full empty bright dark warm";

const QUESTION_STARTS: &[&str] = &[
    "what is",
    "how to",
    "why does",
    "where can i find",
    "best",
    "when did",
    "who",
];

fn words(rng: &mut SplitMix64, n: usize, out: &mut String) {
    let vocab: Vec<&str> = WORDS.split_whitespace().collect();
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(vocab[rng.range(0, vocab.len() - 1)]);
        // Sentence breaks keep passages looking like prose.
        if i + 1 < n && rng.range(0, 14) == 0 {
            out.push('.');
        }
    }
}

/// `n` texts; the same `n` and seed always give the same texts.
pub fn generate(n: usize, seed: u64) -> Vec<String> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let kind = rng.range(0, 5); // 0-2: query, 3-4: sentence, 5: passage
            let mut s = String::new();
            match kind {
                0..=2 => {
                    s.push_str(QUESTION_STARTS[rng.range(0, QUESTION_STARTS.len() - 1)]);
                    s.push(' ');
                    let n = rng.range(2, 8);
                    words(&mut rng, n, &mut s);
                    s.push('?');
                }
                3 | 4 => {
                    let n = rng.range(30, 60);
                    words(&mut rng, n, &mut s);
                    s.push('.');
                }
                _ => {
                    let n = rng.range(150, 300);
                    words(&mut rng, n, &mut s);
                    s.push('.');
                }
            }
            let mut chars = s.chars();
            match chars.next() {
                Some(c) => c.to_uppercase().chain(chars).collect(),
                None => s,
            }
        })
        .collect()
}

pub const SEED: u64 = 20_261_125;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_is_deterministic_and_mixed() {
        let a = generate(600, SEED);
        assert_eq!(a, generate(600, SEED));
        assert_ne!(a, generate(600, SEED + 1));
        let words = |s: &String| s.split_whitespace().count();
        let short = a.iter().filter(|s| words(s) <= 14).count();
        let mid = a.iter().filter(|s| (30..=60).contains(&words(s))).count();
        let long = a.iter().filter(|s| words(s) >= 150).count();
        assert_eq!(short + mid + long, 600);
        assert!((250..350).contains(&short), "{short}");
        assert!((150..250).contains(&mid), "{mid}");
        assert!((60..140).contains(&long), "{long}");
    }
}
